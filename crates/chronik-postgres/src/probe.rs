//! What answers on a port that should be PostgreSQL's: a server of another kind (NATS,
//! Redis, MySQL, an HTTP server...) makes sqlx fail with protocol noise (`expected to read
//! 1414811696 bytes`) or wait for its acquire timeout; [`not_postgres`] says instead that
//! the server is not PostgreSQL and, where it can tell, what it is.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// PostgreSQL's `SSLRequest`: length 8, code 80877103. Every PostgreSQL server answers it
/// at once with one byte, `S` or `N` (whether or not it has TLS), before any
/// authentication; sqlx sends it first too (`sslmode=prefer`).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How long the probe waits for each step (the connection, the answer).
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Connects to `host:port`, sends an `SSLRequest` and reads the answer: `None` when it is
/// PostgreSQL's (or when nothing could be learnt: the port refuses, the host does not
/// answer, which the caller reports as it does without the probe), else what answered, as
/// a sentence for an operator (`NATS answered: INFO {"server_id":...`).
pub(crate) async fn not_postgres(host: &str, port: u16) -> Option<String> {
    let mut stream = tokio::time::timeout(PROBE_WAIT, tokio::net::TcpStream::connect((host, port)))
        .await
        .ok()?
        .ok()?;
    // A server that talks first (NATS, MySQL, SSH, AMQP after any input) may already have.
    stream.write_all(&SSL_REQUEST).await.ok()?;
    let mut answer = [0_u8; 96];
    let read = tokio::time::timeout(PROBE_WAIT, stream.read(&mut answer)).await;
    let answer = match read {
        Err(_) => {
            return Some(format!(
                "it accepted the connection but did not answer PostgreSQL's first message \
                 within {} s (a Redis server, for one, stays silent)",
                PROBE_WAIT.as_secs()
            ));
        }
        Ok(Err(_) | Ok(0)) => {
            return Some(
                "it closed the connection at PostgreSQL's first message without an answer"
                    .to_owned(),
            );
        }
        Ok(Ok(n)) => &answer[..n],
    };
    describe(answer)
}

/// `None` when `answer` is PostgreSQL's answer to an `SSLRequest`, else what it says.
pub(crate) fn describe(answer: &[u8]) -> Option<String> {
    // `S`/`N`, or `E` with an error (a server too old or refusing the request).
    if matches!(answer, [b'S' | b'N'] | [b'E', ..]) {
        return None;
    }
    let kind = if answer.starts_with(b"INFO {") {
        "NATS"
    } else if answer.starts_with(b"HTTP/") {
        "an HTTP server"
    } else if answer.starts_with(b"SSH-") {
        "an SSH server"
    } else if answer.starts_with(b"AMQP") {
        "an AMQP broker (RabbitMQ?)"
    } else if answer.starts_with(b"-ERR") || answer.starts_with(b"-NOAUTH") {
        "a Redis server"
    } else if answer.len() > 5
        && answer[4] == 10
        && answer
            .windows(5)
            .any(|w| w.eq_ignore_ascii_case(b"mysql") || w.eq_ignore_ascii_case(b"maria"))
    {
        "MySQL/MariaDB"
    } else {
        "something"
    };
    Some(format!("{kind} answered: {}", printable(answer)))
}

/// The first printable bytes of `answer`, at most 40 characters, for a message.
fn printable(answer: &[u8]) -> String {
    let text: String = answer
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .take(40)
        .collect();
    let more = if answer.len() > 40 { "..." } else { "" };
    format!("{:?}", format!("{text}{more}"))
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn answers_are_told_apart() {
        assert_eq!(describe(b"S"), None);
        assert_eq!(describe(b"N"), None);
        assert_eq!(describe(b"EFATAL unsupported"), None);
        let nats = describe(br#"INFO {"server_id":"NDK","version":"2.9.20"}"#).unwrap_or_default();
        assert!(nats.starts_with("NATS answered: \"INFO {"), "{nats}");
        let maria =
            describe(b"d\x00\x00\x00\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00").unwrap_or_default();
        assert!(
            maria.starts_with("MySQL/MariaDB answered: \"d....5.5.5-10.11"),
            "{maria}"
        );
        let http = describe(b"HTTP/1.1 400 Bad Request\r\n").unwrap_or_default();
        assert!(http.starts_with("an HTTP server answered"), "{http}");
        let other = describe(&[0xff; 100]).unwrap_or_default();
        assert!(
            other.starts_with("something answered: \"....") && other.ends_with("...\""),
            "{other}"
        );
    }
}
