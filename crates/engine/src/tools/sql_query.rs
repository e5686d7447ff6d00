//! `sql_query`: one read-only query on a named connection — `args: {sql, params}` — answering
//! `{columns, rows, row_count, truncated}` (at most `max_rows` rows, default 100).
//!
//! Read-only by construction, two ways at once: the statement is parsed and walked (see
//! `sql_check.rs`), and it runs where nothing can be written — SQLite opened read-only with
//! `query_only` on and no database attachable; PostgreSQL inside `BEGIN READ ONLY`, rolled back.
//! A statement timeout (default 10 s) interrupts a query that runs too long. Parameters are bound
//! (`?1`/`?` in SQLite, `$1` in PostgreSQL), never spliced into the text.

use super::config::{Built, ToolConfig};
use super::sql_check::{self, Flavor};
use super::{CallContext, Tool, ToolFuture};
use cairn_core::event::{ErrorClass, Failure};
use cairn_core::kinds::EffectClass;
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

enum Target {
    Sqlite(PathBuf),
    Postgres(Box<tokio_postgres::Config>),
}

struct SqlTool {
    target: Target,
    limits: Limits,
    /// Run as a PostgreSQL superuser anyway (`allow_superuser = true`).
    allow_superuser: bool,
}

/// How much a query may return, and for how long it may run.
#[derive(Clone, Copy)]
struct Limits {
    rows: usize,
    /// The rows as JSON, together; also the largest value SQLite may make.
    bytes: usize,
    timeout: Duration,
}

pub(crate) fn build(config: &ToolConfig) -> Result<Built, String> {
    let Some(connection) = config.connection.as_deref() else {
        return Err("a sql_query tool needs `connection` (sqlite://PATH or postgres://…)".into());
    };
    let target = if let Some(path) = connection.strip_prefix("sqlite://") {
        if path.is_empty() || path.contains('?') {
            return Err("`connection` sqlite://PATH needs a file path (no URI parameters)".into());
        }
        Target::Sqlite(PathBuf::from(path))
    } else if connection.starts_with("postgres://") || connection.starts_with("postgresql://") {
        let mut pg: tokio_postgres::Config =
            connection.parse().map_err(|_| "`connection` is not a PostgreSQL URL".to_string())?;
        if pg.get_password().is_some() {
            return Err("`connection` holds a password; name the variable that holds it in `password_env` instead \
                        (the value is not shown)"
                .into());
        }
        if let Some(var) = &config.password_env {
            let password = std::env::var(var).map_err(|_| format!("${var} (password_env) is not set"))?;
            pg.password(password);
        }
        pg.application_name("cairn sql_query");
        Target::Postgres(Box::new(pg))
    } else {
        return Err("`connection` must start with sqlite:// or postgres://".into());
    };
    let max_rows = config.max_rows.unwrap_or(100).max(1) as usize;
    let flavor = match target {
        Target::Sqlite(_) => "SQLite (parameters ?1, ?2 …)",
        Target::Postgres(_) => "PostgreSQL (parameters $1, $2 …)",
    };
    Ok(Built {
        description: format!(
            "Runs one read-only SQL query on {flavor} and returns {{columns, rows, row_count, truncated}} (at most \
             {max_rows} rows). Writes, DDL and several statements are refused."
        ),
        input_schema: json!({
            "type": "object",
            "required": ["sql"],
            "properties": {
                "sql": {"type": "string", "minLength": 1, "maxLength": 100_000},
                "params": {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}}
            },
            "additionalProperties": false
        }),
        effect: EffectClass::Read,
        effect_note: None,
        code: Arc::new(SqlTool {
            target,
            limits: Limits {
                rows: max_rows,
                bytes: config.max_response_bytes.unwrap_or(1024 * 1024).clamp(1024, 1 << 30) as usize,
                timeout: Duration::from_millis(config.statement_timeout_ms.unwrap_or(10_000)),
            },
            allow_superuser: config.allow_superuser,
        }),
    })
}

fn refused(message: String) -> Failure {
    Failure { code: Some("refused".into()), ..Failure::new(ErrorClass::Permanent, message) }
}

impl Tool for SqlTool {
    fn call<'a>(&'a self, args: &'a Value, _ctx: CallContext<'a>) -> ToolFuture<'a> {
        Box::pin(async move {
            let sql = args.get("sql").and_then(Value::as_str).unwrap_or_default();
            let params = args.get("params").and_then(Value::as_array).cloned().unwrap_or_default();
            let flavor = match self.target {
                Target::Sqlite(_) => Flavor::Sqlite,
                Target::Postgres(_) => Flavor::Postgres,
            };
            let statement =
                sql_check::check(sql, flavor).map_err(|why| refused(format!("the query was refused: {why}")))?;
            let (columns, rows, truncated) = match &self.target {
                Target::Sqlite(path) => sqlite(path.clone(), statement, params, self.limits).await?,
                Target::Postgres(config) => {
                    postgres(config, &statement, &params, self.limits, self.allow_superuser).await?
                }
            };
            Ok(json!({"columns": columns, "row_count": rows.len(), "rows": rows, "truncated": truncated}))
        })
    }
}

type Answer = (Vec<String>, Vec<Value>, bool);

/// Whether `row` still fits in the answer (`used` bytes so far); `Err` when the first row alone
/// is over the cap.
fn fits(row: &Value, used: &mut usize, limits: Limits, first: bool) -> Result<bool, Failure> {
    let size = row.to_string().len();
    if first && size > limits.bytes {
        return Err(refused(format!(
            "the first row is {size} bytes as JSON, over this tool's max_response_bytes ({})",
            limits.bytes
        )));
    }
    *used += size;
    Ok(*used <= limits.bytes)
}

async fn sqlite(path: PathBuf, sql: String, params: Vec<Value>, limits: Limits) -> Result<Answer, Failure> {
    let Limits { rows: max, timeout, .. } = limits;
    use rusqlite::types::Value as Sql;
    let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
    let work = tokio::task::spawn_blocking(move || -> Result<Answer, Failure> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&path, flags).map_err(|e| {
            Failure::new(ErrorClass::Permanent, format!("cannot open {} read-only: {e}", path.display()))
        })?;
        let _ = handle_tx.send(conn.get_interrupt_handle());
        let setup = || -> rusqlite::Result<()> {
            conn.pragma_update(None, "query_only", true)?;
            conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)?;
            // No string or blob larger than the answer may hold is ever made.
            let length = i32::try_from(limits.bytes).unwrap_or(i32::MAX);
            conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, length)?;
            conn.busy_timeout(timeout)
        };
        setup().map_err(|e| Failure::new(ErrorClass::Transient, format!("cannot set up the connection: {e}")))?;
        let failed = |e: rusqlite::Error| {
            let text = e.to_string();
            if text.contains("interrupted") {
                Failure::new(
                    ErrorClass::Timeout,
                    format!("the query ran past its timeout of {timeout:?} and was stopped"),
                )
            } else if text.contains("too big") {
                refused(format!("the query made a value over this tool's max_response_bytes ({})", limits.bytes))
            } else if text.contains("locked") || text.contains("busy") {
                Failure::new(ErrorClass::Transient, format!("the query failed: {text}"))
            } else {
                Failure::new(ErrorClass::Permanent, format!("the query failed: {text}"))
            }
        };
        let mut stmt = conn.prepare(&sql).map_err(failed)?;
        if !stmt.readonly() {
            return Err(refused("SQLite says this statement writes; refused".into()));
        }
        let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
        let bound: Vec<Sql> = params
            .iter()
            .map(|v| match v {
                Value::Null => Sql::Null,
                Value::Bool(b) => Sql::Integer(i64::from(*b)),
                Value::Number(n) => {
                    n.as_i64().map(Sql::Integer).unwrap_or_else(|| Sql::Real(n.as_f64().unwrap_or(0.0)))
                }
                Value::String(s) => Sql::Text(s.clone()),
                other => Sql::Text(other.to_string()),
            })
            .collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(bound)).map_err(failed)?;
        let (mut out, mut used) = (Vec::new(), 0);
        while let Some(row) = rows.next().map_err(failed)? {
            if out.len() == max {
                return Ok((columns, out, true));
            }
            let mut object = Map::new();
            for (i, name) in columns.iter().enumerate() {
                let value = match row.get_ref(i).map_err(failed)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => json!(n),
                    rusqlite::types::ValueRef::Real(f) => json!(f),
                    rusqlite::types::ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
                    rusqlite::types::ValueRef::Blob(b) => json!({"blob_bytes": b.len()}),
                };
                object.insert(name.clone(), value);
            }
            let object = Value::Object(object);
            if !fits(&object, &mut used, limits, out.is_empty())? {
                return Ok((columns, out, true));
            }
            out.push(object);
        }
        Ok((columns, out, false))
    });
    let handle = handle_rx.await.ok();
    match tokio::time::timeout(timeout, work).await {
        Ok(joined) => {
            joined.map_err(|e| Failure::new(ErrorClass::Transient, format!("the query's thread failed: {e}")))?
        }
        Err(_) => {
            if let Some(handle) = handle {
                handle.interrupt();
            }
            Err(Failure::new(
                ErrorClass::Timeout,
                format!("the query ran past its timeout of {timeout:?} and was stopped"),
            ))
        }
    }
}

async fn postgres(
    config: &tokio_postgres::Config,
    sql: &str,
    params: &[Value],
    limits: Limits,
    allow_superuser: bool,
) -> Result<Answer, Failure> {
    let Limits { rows: max, bytes, timeout } = limits;
    // The cause too (tokio-postgres says "db error" and keeps the server's words in its source).
    let said = |e: &tokio_postgres::Error| match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    let transient =
        |what: &str, e: tokio_postgres::Error| Failure::new(ErrorClass::Transient, format!("{what}: {}", said(&e)));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| {
        // A missing database, role or password will not appear by retrying.
        let class = match e.code().map(|c| c.code()) {
            Some(c) if c.starts_with("28") || c == "3D000" => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        };
        Failure::new(class, format!("cannot connect to PostgreSQL: {}", said(&e)))
    })?;
    let driver = tokio::spawn(connection);
    let result = async {
        // A read-only transaction stops writes, not a superuser's functions (ending sessions,
        // reading the server's files): such a connection is refused unless the config says so.
        let who = client
            .query_one("SELECT current_user::text, current_setting('is_superuser') = 'on'", &[])
            .await
            .map_err(|e| transient("cannot ask who the connection is", e))?;
        let (user, superuser): (String, bool) = (who.get(0), who.get(1));
        if superuser && !allow_superuser {
            return Err(refused(format!(
                "the connection's role `{user}` is a superuser: a read-only transaction does not stop a superuser's \
                 functions (ending sessions, reading server files). Connect as a role that can only read (GRANT \
                 SELECT, or pg_read_all_data), or set allow_superuser = true on the tool"
            )));
        }
        client
            .batch_execute(&format!("BEGIN READ ONLY; SET LOCAL statement_timeout = {}", timeout.as_millis().max(1)))
            .await
            .map_err(|e| transient("cannot begin a read-only transaction", e))?;
        let failed = |e: tokio_postgres::Error| {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            let text = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
            match code.as_str() {
                "57014" => Failure::new(ErrorClass::Timeout, format!("the query ran past its timeout of {timeout:?}")),
                "25006" => refused(format!("PostgreSQL refused a write in the read-only transaction: {text}")),
                c if c.starts_with("08") || c.starts_with("40") || c.starts_with("53") => {
                    Failure::new(ErrorClass::Transient, format!("the query failed: {text}"))
                }
                _ => Failure::new(ErrorClass::Permanent, format!("the query failed: {text}")),
            }
        };
        let inner = client.prepare(sql).await.map_err(failed)?;
        let columns: Vec<String> = inner.columns().iter().map(|c| c.name().to_string()).collect();
        // Each row as JSON text; one larger than the cap is not sent (only its size is).
        let wrapped = format!(
            "SELECT CASE WHEN octet_length(j) > {bytes} THEN NULL ELSE j END, octet_length(j) FROM \
             (SELECT row_to_json(cairn_row)::text AS j FROM ({sql}\n) AS cairn_row LIMIT {}) AS cairn_rows",
            max + 1
        );
        let stmt = client.prepare(&wrapped).await.map_err(failed)?;
        let bound = bind(stmt.params(), params)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = bound.iter().map(|b| b.as_ref() as _).collect();
        let rows = client.query(&stmt, &refs).await.map_err(failed)?;
        let _ = client.batch_execute("ROLLBACK").await;
        let (mut out, mut used, mut truncated) = (Vec::new(), 0, rows.len() > max);
        for row in rows.iter().take(max) {
            let value = row
                .try_get::<_, Option<String>>(0)
                .ok()
                .flatten()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_else(|| json!({"over_max_response_bytes": row.try_get::<_, i32>(1).unwrap_or(0)}));
            if !fits(&value, &mut used, limits, out.is_empty())? {
                truncated = true;
                break;
            }
            out.push(value);
        }
        Ok((columns, out, truncated))
    }
    .await;
    drop(client);
    driver.abort();
    result
}

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// Binds JSON parameters to the types PostgreSQL inferred for them.
fn bind(types: &[tokio_postgres::types::Type], params: &[Value]) -> Result<Vec<Param>, Failure> {
    use tokio_postgres::types::Type;
    if types.len() != params.len() {
        return Err(Failure::new(
            ErrorClass::Permanent,
            format!("the query takes {} parameter(s) and args.params has {}", types.len(), params.len()),
        ));
    }
    let mut out: Vec<Param> = Vec::with_capacity(params.len());
    for (n, (ty, v)) in types.iter().zip(params).enumerate() {
        let n = n + 1;
        let wrong = || {
            Failure::new(
                ErrorClass::Permanent,
                format!("parameter ${n} is {ty} in this query, and {v} does not fit it"),
            )
        };
        let text = || v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        let param: Param = match *ty {
            Type::BOOL => Box::new(if v.is_null() { None } else { Some(v.as_bool().ok_or_else(wrong)?) }),
            Type::INT2 => {
                Box::new(int(v).map(|i| i16::try_from(i).map_err(|_| wrong())).transpose()?.or_none(v, wrong)?)
            }
            Type::INT4 => {
                Box::new(int(v).map(|i| i32::try_from(i).map_err(|_| wrong())).transpose()?.or_none(v, wrong)?)
            }
            Type::INT8 => Box::new(int(v).or_none(v, wrong)?),
            Type::FLOAT4 => Box::new(v.as_f64().map(|f| f as f32).or_none(v, wrong)?),
            Type::FLOAT8 => Box::new(v.as_f64().or_none(v, wrong)?),
            Type::NUMERIC => match v {
                Value::Null => Box::new(None::<Numeric>),
                _ => Box::new(Numeric::parse(&text()).ok_or_else(wrong)?),
            },
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Box::new(if v.is_null() { None } else { Some(text()) })
            }
            _ => {
                return Err(Failure::new(
                    ErrorClass::Permanent,
                    format!("parameter ${n} is {ty} in this query; cast it in the SQL (e.g. ${n}::text::{ty})"),
                ));
            }
        };
        out.push(param);
    }
    Ok(out)
}

/// A decimal bound to a `numeric` parameter, in PostgreSQL's binary form (base-10000 digits).
#[derive(Debug)]
struct Numeric {
    negative: bool,
    /// Digits before and after the point, as written (no sign, no exponent).
    whole: String,
    fraction: String,
}

impl Numeric {
    fn parse(text: &str) -> Option<Numeric> {
        let text = text.trim();
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) || fraction.len() > 1000 {
            return None;
        }
        Some(Numeric { negative, whole: whole.to_string(), fraction: fraction.to_string() })
    }
}

impl tokio_postgres::types::ToSql for Numeric {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        let whole = self.whole.trim_start_matches('0');
        let pad_left = (4 - whole.len() % 4) % 4;
        let pad_right = (4 - self.fraction.len() % 4) % 4;
        let all = format!("{}{whole}{}{}", "0".repeat(pad_left), self.fraction, "0".repeat(pad_right));
        let mut groups: Vec<i16> =
            all.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or("0").parse().unwrap_or(0)).collect();
        let mut weight = ((pad_left + whole.len()) / 4) as i16 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        out.put_i16(groups.len() as i16);
        out.put_i16(weight);
        out.put_u16(if self.negative && !groups.is_empty() { 0x4000 } else { 0 });
        out.put_u16(self.fraction.len() as u16);
        for g in groups {
            out.put_i16(g);
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::NUMERIC
    }

    tokio_postgres::types::to_sql_checked!();
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// `None` for a JSON null; a value that is there but did not convert is an error.
trait OrNone<T> {
    fn or_none(self, v: &Value, wrong: impl Fn() -> Failure) -> Result<Option<T>, Failure>;
}

impl<T> OrNone<T> for Option<T> {
    fn or_none(self, v: &Value, wrong: impl Fn() -> Failure) -> Result<Option<T>, Failure> {
        match (self, v.is_null()) {
            (Some(x), _) => Ok(Some(x)),
            (None, true) => Ok(None),
            (None, false) => Err(wrong()),
        }
    }
}
