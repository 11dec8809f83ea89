//! Numbers and durations for people, as the operator commands print them; public so
//! that a service's own commands (and the demo) print them the same way.

use std::time::Duration;

/// `1 page`, `2 pages`.
pub fn count(value: u64, noun: &str) -> String {
    if value == 1 {
        format!("1 {noun}")
    } else {
        format!("{} {noun}s", n(value))
    }
}

/// A duration for people: `842 µs`, `12.3 ms`, `1.42 s`.
pub fn ms(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// An integer with thousands separators: `12,345`.
pub fn n(value: impl Into<i128>) -> String {
    let value: i128 = value.into();
    let digits = value.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(n(0u32), "0");
        assert_eq!(n(999u32), "999");
        assert_eq!(n(1_000u32), "1,000");
        assert_eq!(n(1_234_567u64), "1,234,567");
        assert_eq!(n(-4_200i64), "-4,200");
        assert_eq!(ms(Duration::from_micros(842)), "842 µs");
        assert_eq!(ms(Duration::from_micros(12_340)), "12.3 ms");
        assert_eq!(ms(Duration::from_millis(1_420)), "1.42 s");
        assert_eq!(count(1, "page"), "1 page");
        assert_eq!(count(1_000, "page"), "1,000 pages");
    }
}
