"""PostgreSQL: connection, migrations, accounts, the ledger and its debit, outbox, recharges."""
