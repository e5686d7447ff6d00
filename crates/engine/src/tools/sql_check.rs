//! The `sql_query` tool's first guard: the statement is parsed and its whole syntax tree walked.
//! Exactly one statement; a query only (no DML, DDL, `COPY`, `ATTACH`, `SET` …, wherever they
//! hide: a data-modifying CTE, a nested statement); no `SELECT … INTO`; no row locks; no function
//! from the deny-list (server administration, files, large objects, remote links, sequences,
//! sleeps, and those that run SQL given as text); SQLite `PRAGMA` only in its read form, from a
//! short list. What runs is the statement
//! as walked (printed back from the tree), so the parser and the database cannot disagree about
//! what was checked. The second guard is the read-only transaction the query runs in.

use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// Which database the statement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    Sqlite,
    Postgres,
}

/// Functions refused by name (lower case; an entry ending in `*` is a prefix).
const DENIED: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_signal_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_read_*",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "pg_logdir_ls",
    "pg_switch_wal",
    "pg_create_*",
    "pg_drop_*",
    "pg_replication_*",
    "pg_backup_*",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_import_system_collations",
    "pg_log_*",
    "pg_logical_*",
    "pg_stat_reset*",
    "pg_wal_replay_*",
    "pg_copy_*",
    "txid_current*",
    "pg_current_xact_id*",
    // Functions that run SQL given as text: the walk cannot see inside a string.
    "ts_stat",
    "ts_rewrite",
    "pg_export_snapshot",
    "pg_notify",
    "pg_sleep*",
    "pg_advisory_*",
    "pg_try_advisory_*",
    "set_config",
    "nextval",
    "setval",
    "lo_*",
    "dblink*",
    "query_to_xml*",
    "cursor_to_xml*",
    "database_to_xml*",
    "schema_to_xml*",
    "table_to_xml*",
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
];

/// SQLite pragmas that only read, allowed without a value.
const READ_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "collation_list",
    "function_list",
    "pragma_list",
    "compile_options",
    "database_list",
];

/// Checks `sql`; `Ok` is the one statement to run, printed from the walked tree.
pub(crate) fn check(sql: &str, flavor: Flavor) -> Result<String, String> {
    let dialect: &dyn Dialect = match flavor {
        Flavor::Sqlite => &SQLiteDialect {},
        Flavor::Postgres => &PostgreSqlDialect {},
    };
    let statements = Parser::parse_sql(dialect, sql).map_err(|e| format!("the SQL does not parse: {e}"))?;
    let statement = match statements.as_slice() {
        [one] => one,
        [] => return Err("there is no statement".into()),
        many => {
            return Err(format!(
                "{} statements were given (comments and `;` do not hide one): only one query may run",
                many.len()
            ));
        }
    };
    match statement {
        Statement::Query(_) => {}
        // The read form: `PRAGMA table_info`, or `PRAGMA table_info(orders)` (never `= value`).
        Statement::Pragma { name, is_eq: false, .. } if flavor == Flavor::Sqlite => {
            let pragma = last(name);
            if !READ_PRAGMAS.contains(&pragma.as_str()) {
                return Err(format!(
                    "PRAGMA {pragma} is not one of the read-only pragmas ({})",
                    READ_PRAGMAS.join(", ")
                ));
            }
            return Ok(statement.to_string());
        }
        Statement::Pragma { name, .. } => {
            return Err(format!("PRAGMA {} with a value changes the database; only queries may run", last(name)));
        }
        other => return Err(format!("{} is not a query; only read-only queries may run", what(other))),
    }
    let mut walker = Walker;
    if let ControlFlow::Break(why) = statement.visit(&mut walker) {
        return Err(why);
    }
    Ok(statement.to_string())
}

/// The first words of a statement, for messages.
fn what(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let first = words.first().copied().unwrap_or_default().to_ascii_uppercase();
    match first.as_str() {
        "CREATE" | "DROP" | "ALTER" | "COPY" | "ATTACH" | "DETACH" | "SET" | "EXPLAIN" => {
            format!("{first} {}", words.get(1).copied().unwrap_or_default().to_ascii_uppercase())
        }
        _ => first,
    }
}

fn last(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => ident.value.to_ascii_lowercase(),
        Some(ObjectNamePart::Function(f)) => f.name.value.to_ascii_lowercase(),
        None => String::new(),
    }
}

fn denied(name: &ObjectName) -> Option<String> {
    let name = last(name);
    DENIED
        .iter()
        .any(|d| match d.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *d,
        })
        .then_some(name)
}

struct Walker;

impl Visitor for Walker {
    type Break = String;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<String> {
        match statement {
            Statement::Query(_) => ControlFlow::Continue(()),
            other => ControlFlow::Break(format!("a nested {} is not allowed; only reads may run", what(other))),
        }
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if !query.locks.is_empty() {
            return ControlFlow::Break("row locks (`FOR UPDATE`, `FOR SHARE`) are not allowed".into());
        }
        if !query.pipe_operators.is_empty() {
            return ControlFlow::Break("pipe operators are not allowed".into());
        }
        modifying(&query.body)
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        if select.into.is_some() {
            return ControlFlow::Break("`SELECT … INTO` creates a table; it is not allowed".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<String> {
        if let Expr::Function(f) = expr
            && let Some(name) = denied(&f.name)
        {
            return ControlFlow::Break(format!("function {name}() is not allowed in a read-only query"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        let name = match factor {
            TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => denied(name),
            _ => None,
        };
        match name {
            Some(name) => ControlFlow::Break(format!("function {name}() is not allowed in a read-only query")),
            None => ControlFlow::Continue(()),
        }
    }
}

/// A data-modifying body anywhere in a set expression (`WITH d AS (DELETE … RETURNING *)`).
fn modifying(body: &SetExpr) -> ControlFlow<String> {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => ControlFlow::Break(
            "a data-modifying statement inside the query (e.g. in a WITH clause) is not allowed".into(),
        ),
        SetExpr::SetOperation { left, right, .. } => {
            modifying(left)?;
            modifying(right)
        }
        _ => ControlFlow::Continue(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pass_and_come_back_as_walked() {
        for flavor in [Flavor::Sqlite, Flavor::Postgres] {
            for sql in [
                "SELECT 1",
                "select id, total from orders where total > ? order by id limit 5;",
                "WITH t AS (SELECT 1 AS x) SELECT x FROM t UNION SELECT 2",
                "SELECT count(*) FROM orders -- a comment; DELETE FROM orders",
            ] {
                let sql = if flavor == Flavor::Postgres { sql.replace('?', "$1") } else { sql.to_string() };
                assert!(check(&sql, flavor).is_ok(), "{flavor:?}: {sql}: {:?}", check(&sql, flavor));
            }
        }
        assert_eq!(check("select 1 ;", Flavor::Sqlite).as_deref(), Ok("SELECT 1"));
        assert!(check("PRAGMA table_info('orders')", Flavor::Sqlite).is_ok());
    }

    #[test]
    fn writes_and_their_disguises_are_refused_with_the_reason() {
        let refused = |sql: &str, flavor, says: &str| {
            let why = check(sql, flavor).expect_err(sql);
            assert!(why.contains(says), "{sql}: {why}");
        };
        use Flavor::{Postgres as Pg, Sqlite};
        refused("DELETE FROM orders", Sqlite, "DELETE is not a query");
        refused("UPDATE orders SET total = 0", Pg, "UPDATE is not a query");
        refused("DROP TABLE orders", Pg, "DROP TABLE is not a query");
        refused("INSERT INTO orders VALUES (1)", Sqlite, "INSERT is not a query");
        refused("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", Pg, "data-modifying");
        refused("SELECT * INTO t FROM orders", Pg, "SELECT … INTO");
        refused("SELECT pg_terminate_backend(1)", Pg, "pg_terminate_backend() is not allowed");
        refused("SELECT lo_import('/etc/passwd')", Pg, "lo_import()");
        refused("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", Pg, "dblink()");
        refused("SELECT 1; SELECT 2", Sqlite, "2 statements");
        refused("SELECT 1; /* hidden */ DELETE FROM orders", Sqlite, "2 statements");
        refused("ATTACH DATABASE '/tmp/x.db' AS x", Sqlite, "ATTACH");
        refused("PRAGMA journal_mode='wal'", Sqlite, "PRAGMA journal_mode with a value");
        refused("PRAGMA journal_mode=DELETE", Sqlite, "does not parse");
        refused("PRAGMA cache_size(100)", Sqlite, "not one of the read-only pragmas");
        refused("PRAGMA query_only = 0", Sqlite, "PRAGMA query_only with a value");
        refused("PRAGMA wal_checkpoint", Sqlite, "not one of the read-only pragmas");
        refused("SELECT * FROM orders FOR UPDATE", Pg, "row locks");
        refused("SELECT nextval('s')", Pg, "nextval()");
        refused("SELECT * FROM ts_stat($q$select to_tsvector(pg_terminate_backend(1)::text)$q$)", Pg, "ts_stat()");
        refused("SELECT pg_catalog.pg_stat_reset_shared('bgwriter')", Pg, "pg_stat_reset_shared()");
        refused("SELECT pg_logical_emit_message(false, 'x', 'y')", Pg, "pg_logical_emit_message()");
        refused("SELECT txid_current()", Pg, "txid_current()");
        refused("SELECT \"PG_READ_FILE\"('/etc/hostname')", Pg, "pg_read_file()");
        refused("COPY orders TO '/tmp/x'", Pg, "COPY");
        refused("SET search_path = x", Pg, "not a query");
        refused("EXPLAIN ANALYZE DELETE FROM orders", Pg, "EXPLAIN");
        refused("SELECT load_extension('x')", Sqlite, "load_extension()");
        refused("", Sqlite, "no statement");
    }
}
