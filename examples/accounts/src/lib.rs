//! A second example service on chronik, shaped differently from Orders: bank accounts,
//! and transfers between them as a debit on one account and a credit on another, both
//! carrying the transfer's id, written atomically ([`transfer`]: one multi-stream append,
//! so money is never debited without being credited; each account decides its own part,
//! and a refused debit refuses the whole transfer).
//!
//! - [`Account`]: opened by an owner, credited and debited in cents, never below zero,
//!   closed only when empty;
//! - schema history: `AccountOpened` v1 stored the owner as `holder`; v2 (current) calls it
//!   `owner` ([`upcasters`]);
//! - [`Balances`]: a typed PostgreSQL read model (`account_balances`), one row per account,
//!   kept exactly once ([`chronik::postgres::PgTypedProjection`]); its table comes from
//!   [`Balances::create_table`], not from chronik;
//! - the operator binary `accounts-admin` (`src/bin/accounts-admin.rs`):
//!   `chronik::cli::Operator` with all of the above registered.
//!
//! It depends on the `chronik` facade only.

use chronik::postgres::sqlx::{self, PgExecutor, Row as _};
use chronik::postgres::{HandlerError, PgTransaction, PgTypedProjection, ShadowProjection};
use chronik::{
    Aggregate, DomainEvent, EventStore, Metadata, MultiOutcome, PgEventStore, RecordedEvent,
    Repository, RepositoryError, SchemaName, SnapshotState, StreamId, UpcastError,
    UpcasterRegistry,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Who owns it (empty until opened).
    pub owner: String,
    /// Balance in cents, never negative.
    pub balance: i64,
    /// Whether it is open.
    pub open: bool,
    /// Whether it was closed.
    pub closed: bool,
}

/// Commands an account accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Open it for `owner`.
    Open {
        /// The owner.
        owner: String,
    },
    /// Credit `amount` cents (> 0), from transfer `transfer` if any.
    Credit {
        /// Cents.
        amount: i64,
        /// The transfer this credit completes, if any.
        transfer: Option<String>,
    },
    /// Debit `amount` cents (> 0, at most the balance), for transfer `transfer` if any.
    Debit {
        /// Cents.
        amount: i64,
        /// The transfer this debit starts, if any.
        transfer: Option<String>,
    },
    /// Close it (only when empty).
    Close,
}

/// Events of an account, stored under their variant names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    /// The account was opened (v2: `owner`; v1 said `holder`).
    #[event(schema_version = 2)]
    AccountOpened {
        /// The owner.
        owner: String,
    },
    /// Money came in.
    Credited {
        /// Cents.
        amount: i64,
        /// The transfer it completes, if any.
        transfer: Option<String>,
    },
    /// Money went out.
    Debited {
        /// Cents.
        amount: i64,
        /// The transfer it starts, if any.
        transfer: Option<String>,
    },
    /// The account was closed.
    AccountClosed {},
}

/// A command the account refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Opening twice.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Acting on an account that is not open.
    #[error("the account is not open")]
    NotOpen,
    /// A debit larger than the balance.
    #[error("insufficient funds: balance {balance}, debit {amount}")]
    InsufficientFunds {
        /// The balance.
        balance: i64,
        /// The refused debit.
        amount: i64,
    },
    /// Closing an account that still holds money.
    #[error("cannot close an account holding {0} cents")]
    NotEmpty(i64),
    /// A field out of range.
    #[error("invalid: {0}")]
    Invalid(&'static str),
}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open { .. } if self.open || self.closed => {
                Err(AccountError::AlreadyOpen)
            }
            AccountCommand::Open { owner } if owner.trim().is_empty() => {
                Err(AccountError::Invalid("the owner is empty"))
            }
            AccountCommand::Open { owner } => Ok(vec![AccountEvent::AccountOpened {
                owner: owner.clone(),
            }]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Credit { amount, .. } | AccountCommand::Debit { amount, .. }
                if *amount <= 0 =>
            {
                Err(AccountError::Invalid("an amount must be positive"))
            }
            AccountCommand::Credit { amount, transfer } => {
                self.balance
                    .checked_add(*amount)
                    .ok_or(AccountError::Invalid("the balance overflows"))?;
                Ok(vec![AccountEvent::Credited {
                    amount: *amount,
                    transfer: transfer.clone(),
                }])
            }
            AccountCommand::Debit { amount, .. } if *amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    amount: *amount,
                })
            }
            AccountCommand::Debit { amount, transfer } => Ok(vec![AccountEvent::Debited {
                amount: *amount,
                transfer: transfer.clone(),
            }]),
            AccountCommand::Close if self.balance != 0 => Err(AccountError::NotEmpty(self.balance)),
            AccountCommand::Close => Ok(vec![AccountEvent::AccountClosed {}]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::AccountOpened { owner } => {
                self.owner.clone_from(owner);
                self.open = true;
            }
            AccountEvent::Credited { amount, .. } => {
                self.balance = self.balance.saturating_add(*amount);
            }
            AccountEvent::Debited { amount, .. } => {
                self.balance = self.balance.saturating_sub(*amount);
            }
            AccountEvent::AccountClosed {} => {
                self.open = false;
                self.closed = true;
            }
        }
    }
}

/// Moves `amount` cents from `from` to `to` as transfer `transfer_id`: a debit of `from`
/// and a credit of `to`, decided each on its own account and appended together in one
/// atomic multi-stream append ([`Repository::execute_all`]). Either both are recorded or
/// neither: a refused debit (insufficient funds, a closed account) refuses the transfer,
/// and a concurrent change to either account reloads both and decides again (with the
/// repository's backoff), giving up with [`RepositoryError::RetriesExhausted`].
///
/// # Errors
/// [`RepositoryError::Domain`] when either account refuses its part (nothing written),
/// [`RepositoryError::Store`] with `InvalidRequest` when `from` and `to` are the same
/// account, and the repository's other errors.
pub async fn transfer<S: EventStore>(
    accounts: &Repository<Account, S>,
    from: &StreamId,
    to: &StreamId,
    amount: i64,
    transfer_id: &str,
    metadata: Metadata,
) -> Result<MultiOutcome, RepositoryError<AccountError>> {
    let transfer = Some(transfer_id.to_owned());
    accounts
        .execute_all(
            &[
                (
                    from.clone(),
                    AccountCommand::Debit {
                        amount,
                        transfer: transfer.clone(),
                    },
                ),
                (to.clone(), AccountCommand::Credit { amount, transfer }),
            ],
            metadata,
        )
        .await
}

impl SnapshotState for Account {
    const STATE_SCHEMA_VERSION: u32 = 1;

    fn to_state(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn from_state(state: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(state)
    }
}

/// `AccountOpened` v1 (`holder`) to v2 (`owner`).
///
/// # Errors
/// When the payload is not an object or has no `holder`.
pub fn account_opened_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let obj = payload
        .as_object_mut()
        .ok_or("AccountOpened payload is not an object")?;
    let holder = obj
        .remove("holder")
        .ok_or("AccountOpened v1 has no `holder`")?;
    obj.insert("owner".to_owned(), holder);
    Ok(payload)
}

/// The accounts upcaster registry.
///
/// # Errors
/// Never for this fixed chain; the result type is the registry's.
pub fn upcasters() -> Result<UpcasterRegistry, UpcastError> {
    UpcasterRegistry::builder()
        .current("AccountOpened", 2)
        .step("AccountOpened", 1, account_opened_v1_to_v2)
        .current("Credited", 1)
        .current("Debited", 1)
        .current("AccountClosed", 1)
        .build()
}

/// The balances read model: `account_balances (account_id, owner, balance, open, version)`,
/// one row per account, written with version-guarded statements so that a replay changes
/// nothing.
#[derive(Debug, Clone)]
pub struct Balances {
    schema: SchemaName,
    table: String,
}

impl Balances {
    /// The projection's name (its checkpoint key, `projections rebuild balances`).
    pub const NAME: &'static str = "balances";
    /// The live table.
    pub const TABLE: &'static str = "account_balances";

    /// The read model in `schema`.
    #[must_use]
    pub fn new(schema: &SchemaName) -> Self {
        Self {
            schema: schema.clone(),
            table: Self::TABLE.to_owned(),
        }
    }

    fn qualified(&self) -> String {
        // `table` is `TABLE` or a shadow name the rebuild derived from it: plain identifiers.
        format!("{}.\"{}\"", self.schema.quoted(), self.table)
    }

    /// Creates `account_balances` in `store`'s schema unless it exists. Idempotent.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_table(store: &PgEventStore) -> Result<(), sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {}.\"{}\" (\
                account_id text   NOT NULL PRIMARY KEY,\
                owner      text   NOT NULL,\
                balance    bigint NOT NULL,\
                open       bool   NOT NULL,\
                version    bigint NOT NULL)",
            store.schema().quoted(),
            Self::TABLE
        )))
        .execute(store.pool())
        .await?;
        Ok(())
    }

    /// Every row `(account_id, owner, balance, open, version)`, by account id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn all<'e>(
        &self,
        executor: impl PgExecutor<'e>,
    ) -> Result<Vec<(String, String, i64, bool, i64)>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT account_id, owner, balance, open, version FROM {} ORDER BY account_id COLLATE \"C\"",
            self.qualified()
        )))
        .fetch_all(executor)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }
}

impl PgTypedProjection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn categories(&self) -> Vec<String> {
        vec![Account::TYPE.to_owned()]
    }

    async fn handle(
        &self,
        tx: &mut PgTransaction,
        event: AccountEvent,
        envelope: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let t = self.qualified();
        let id = envelope.stream_id.as_str();
        let version = envelope.version.as_i64();
        match event {
            AccountEvent::AccountOpened { owner } => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {t} (account_id, owner, balance, open, version) \
                     VALUES ($1, $2, 0, true, $3) ON CONFLICT (account_id) DO NOTHING"
                )))
                .bind(id)
                .bind(owner)
                .bind(version)
                .execute(&mut **tx)
                .await?;
            }
            AccountEvent::Credited { amount, .. } | AccountEvent::Debited { amount, .. } => {
                let delta = if matches!(event, AccountEvent::Debited { .. }) {
                    -amount
                } else {
                    amount
                };
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {t} SET balance = balance + $2, version = $3 \
                      WHERE account_id = $1 AND version < $3"
                )))
                .bind(id)
                .bind(delta)
                .bind(version)
                .execute(&mut **tx)
                .await?;
            }
            AccountEvent::AccountClosed {} => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {t} SET open = false, version = $2 \
                      WHERE account_id = $1 AND version < $2"
                )))
                .bind(id)
                .bind(version)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    async fn clear(&self, tx: &mut PgTransaction) -> Result<(), HandlerError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {}",
            self.qualified()
        )))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl ShadowProjection for Balances {
    fn table(&self) -> &str {
        &self.table
    }

    fn with_table(&self, table: &str) -> Self {
        Self {
            schema: self.schema.clone(),
            table: table.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(events: &[AccountEvent]) -> Account {
        Account::replay(events)
    }

    #[test]
    fn an_account_refuses_overdrafts_and_closing_while_it_holds_money() {
        let opened = AccountEvent::AccountOpened {
            owner: "ann".into(),
        };
        let account = replay(&[
            opened.clone(),
            AccountEvent::Credited {
                amount: 100,
                transfer: None,
            },
        ]);
        assert_eq!(account.balance, 100);
        assert_eq!(
            account.handle(&AccountCommand::Debit {
                amount: 101,
                transfer: None
            }),
            Err(AccountError::InsufficientFunds {
                balance: 100,
                amount: 101
            })
        );
        assert_eq!(
            account.handle(&AccountCommand::Close),
            Err(AccountError::NotEmpty(100))
        );
        assert_eq!(
            replay(std::slice::from_ref(&opened)).handle(&AccountCommand::Open {
                owner: "bob".into()
            }),
            Err(AccountError::AlreadyOpen)
        );
        assert_eq!(
            Account::default().handle(&AccountCommand::Credit {
                amount: 1,
                transfer: None
            }),
            Err(AccountError::NotOpen)
        );
    }

    #[test]
    fn a_v1_account_opened_reads_as_v2() {
        let registry = upcasters().expect("valid chain");
        let (t, v, p) = registry
            .upcast("AccountOpened", 1, serde_json::json!({ "holder": "ann" }))
            .expect("upcast");
        assert_eq!((t.as_str(), v), ("AccountOpened", 2));
        assert_eq!(
            AccountEvent::from_payload(&t, p).expect("decodes"),
            AccountEvent::AccountOpened {
                owner: "ann".into()
            }
        );
    }
}
