//! `accounts-admin`: the accounts service's operator tool, which is `chronik::cli::Operator`
//! with the service's upcasters, read model and aggregate registered.

use std::process::ExitCode;

use accounts::{Account, Balances};
use chronik::cli::Operator;
use chronik::postgres::Typed;

fn main() -> ExitCode {
    Operator::new("accounts-admin")
        .upcasters(accounts::upcasters())
        .projection(|schema| Typed(Balances::new(schema)))
        .setup(|store| async move { Balances::create_table(&store).await })
        .snapshots::<Account>()
        .run()
}
