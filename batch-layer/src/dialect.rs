//! One text of each view's SQL for both batch engines (DuckDB, Spark SQL).
//!
//! The view files in `batch-layer/sql/` are written in the SQL the two
//! engines share, over a relation `events` that each engine defines with
//! one derived column, `ts_ms` (the event time as BIGINT milliseconds: see
//! [`Dialect::events_relation`]). Where the two dialects differ, a file
//! names what it means with a placeholder, `{{name(args)}}`, which
//! [`expand`] writes out in the engine's dialect:
//!
//! | placeholder | DuckDB | Spark SQL |
//! |---|---|---|
//! | `{{set_agg(x)}}` | `list(DISTINCT x)` | `collect_set(x)` |
//! | `{{list_agg(x)}}` | `list(x)` | `collect_list(x)` |
//! | `{{tuple(a, b)}}` | `row(a, b)` | `struct(a, b)` |
//! | `{{ordered_sum(v; k1, k2)}}` | `sum(v ORDER BY k1, k2)` | `aggregate(array_sort(collect_list(named_struct('k0', k1, 'k1', k2, 'v', v))), CAST(0 AS DOUBLE), (acc, x) -> acc + x.v)` |
//!
//! The rest (`count(*) FILTER (WHERE …)`, `max_by`, `coalesce`, `least`,
//! `CAST`, `GROUP BY 1, 2`) reads the same in both. Lists feed the sketches
//! folded in Rust ([`crate::views`]), which do not depend on list order;
//! `ordered_sum` is a floating-point sum in a fixed order (addition of
//! doubles depends on order, and Spark's `sum` takes no `ORDER BY`).

use std::fmt::Write as _;

use lambda_events::Topic;

/// A batch engine's SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// DuckDB, in process (the default engine).
    DuckDb,
    /// Spark SQL (through Spark Connect).
    Spark,
}

impl Dialect {
    /// The SELECT defining `events` over `files` of `topic` (not empty: a run with no
    /// file has no view to compute): every column of the master dataset,
    /// and `ts_ms`. The files are the manifest's own list, never a
    /// directory (superseded files sit beside the live ones).
    ///
    /// The float columns read `-0.0` as `0.0`: the engines order the two
    /// zeros differently in `min`, `max` and `arg_max`, and a lake written
    /// before the decoders did the same may hold `-0.0`.
    pub fn events_relation(self, topic: Topic, files: &[String]) -> anyhow::Result<String> {
        anyhow::ensure!(!files.is_empty(), "no file to read the events from");
        let float_columns = crate::master::float_columns(topic);
        let zeros = float_columns
            .iter()
            .map(|c| format!("CASE WHEN {c} = 0 THEN CAST(0 AS DOUBLE) ELSE {c} END AS {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let floats = float_columns.join(", ");
        Ok(match self {
            Dialect::DuckDb => format!(
                "SELECT * REPLACE ({zeros}), epoch_ms(ts) AS ts_ms FROM read_parquet([{}])",
                files
                    .iter()
                    .map(|f| crate::views::sql_string(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dialect::Spark => {
                let mut relations = Vec::with_capacity(files.len());
                for file in files {
                    // Spark reads a path with these as a glob.
                    anyhow::ensure!(
                        !file.contains(crate::spark::GLOB_CHARACTERS),
                        "{file}: Spark would read this path as a glob (a lake path for Spark has none of * ? [ ] {{ }} \\)"
                    );
                    relations.push(format!(
                        "SELECT * EXCEPT ({floats}), {zeros}, unix_millis(ts) AS ts_ms FROM parquet.`{}`",
                        file.replace('`', "``")
                    ));
                }
                relations.join(" UNION ALL ")
            }
        })
    }
}

/// `sql` with every `{{name(args)}}` written out in `dialect`. An unknown
/// name, a wrong number of arguments or an unclosed placeholder is an
/// error naming it (the files are ours: a test expands each in both).
pub fn expand(sql: &str, dialect: Dialect) -> anyhow::Result<String> {
    let mut out = String::with_capacity(sql.len() + 256);
    let mut rest = sql;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| anyhow::anyhow!("an unclosed {{{{ at {:?}", head(&rest[open..])))?;
        let call = after[..close].trim();
        write_call(&mut out, call, dialect)?;
        rest = &after[close + 2..];
    }
    anyhow::ensure!(
        !rest.contains("}}"),
        "a }}}} without its {{{{ at {:?}",
        head(&rest[rest.find("}}").unwrap_or(0)..])
    );
    out.push_str(rest);
    Ok(out)
}

fn head(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

/// Writes one placeholder, `name(args)`, in `dialect`.
fn write_call(out: &mut String, call: &str, dialect: Dialect) -> anyhow::Result<()> {
    let (name, args) = call
        .strip_suffix(')')
        .and_then(|c| c.split_once('('))
        .ok_or_else(|| anyhow::anyhow!("{{{{{call}}}}} is not name(args)"))?;
    let name = name.trim();
    // `ordered_sum(v; k1, k2)`: the value, then the keys it is ordered by.
    let (value, args) = match args.split_once(';') {
        Some((value, keys)) => (Some(value.trim()), keys),
        None => (None, args),
    };
    let args = split_args(args);
    let arity = |n: usize, with_value: bool| {
        anyhow::ensure!(
            args.len() == n && value.is_some() == with_value,
            "{{{{{call}}}}}: {name} takes {}{n} argument{}",
            if with_value { "a value; and " } else { "" },
            if n == 1 { "" } else { "s" }
        );
        Ok(())
    };
    match (name, dialect) {
        ("set_agg", _) => {
            arity(1, false)?;
            match dialect {
                Dialect::DuckDb => write!(out, "list(DISTINCT {})", args[0])?,
                Dialect::Spark => write!(out, "collect_set({})", args[0])?,
            }
        }
        ("list_agg", _) => {
            arity(1, false)?;
            match dialect {
                Dialect::DuckDb => write!(out, "list({})", args[0])?,
                Dialect::Spark => write!(out, "collect_list({})", args[0])?,
            }
        }
        ("tuple", _) => {
            anyhow::ensure!(
                args.len() >= 2 && value.is_none(),
                "{{{{{call}}}}}: tuple takes two or more arguments"
            );
            let constructor = match dialect {
                Dialect::DuckDb => "row",
                Dialect::Spark => "struct",
            };
            write!(out, "{constructor}({})", args.join(", "))?;
        }
        ("ordered_sum", _) => {
            let value = value.ok_or_else(|| {
                anyhow::anyhow!("{{{{{call}}}}}: ordered_sum takes a value; and its order keys")
            })?;
            anyhow::ensure!(
                !args.is_empty() && args.iter().all(|a| !a.is_empty()),
                "{{{{{call}}}}}: ordered_sum needs at least one order key"
            );
            match dialect {
                Dialect::DuckDb => write!(out, "sum({value} ORDER BY {})", args.join(", "))?,
                Dialect::Spark => {
                    // Sorted by the keys (then the value, never reached when
                    // the keys are unique), added from 0.0 in that order.
                    let fields: Vec<String> = args
                        .iter()
                        .enumerate()
                        .map(|(i, k)| format!("'k{i}', {k}"))
                        .collect();
                    write!(
                        out,
                        "aggregate(array_sort(collect_list(named_struct({}, 'v', {value}))), \
                         CAST(0 AS DOUBLE), (acc, x) -> acc + x.v)",
                        fields.join(", ")
                    )?;
                }
            }
        }
        _ => anyhow::bail!("{{{{{call}}}}}: no placeholder named {name:?}"),
    }
    Ok(())
}

/// Arguments split at the commas outside parentheses and quotes, trimmed.
fn split_args(args: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in args.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(args[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = args[start..].trim();
    if !last.is_empty() || !out.is_empty() {
        out.push(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_in_each_dialect() {
        let cases = [
            (
                "{{set_agg(user_id)}}",
                "list(DISTINCT user_id)",
                "collect_set(user_id)",
            ),
            (
                "{{list_agg(render_ms)}}",
                "list(render_ms)",
                "collect_list(render_ms)",
            ),
            (
                "max_by(v, {{tuple(ts_ms, event_id)}})",
                "max_by(v, row(ts_ms, event_id))",
                "max_by(v, struct(ts_ms, event_id))",
            ),
            (
                "{{ ordered_sum(value; ts_ms, event_id) }}",
                "sum(value ORDER BY ts_ms, event_id)",
                "aggregate(array_sort(collect_list(named_struct('k0', ts_ms, 'k1', event_id, 'v', value))), \
                 CAST(0 AS DOUBLE), (acc, x) -> acc + x.v)",
            ),
            (
                "{{tuple(coalesce(a, 'x,y'), b)}} AND {{list_agg(c)}}",
                "row(coalesce(a, 'x,y'), b) AND list(c)",
                "struct(coalesce(a, 'x,y'), b) AND collect_list(c)",
            ),
            ("no placeholder", "no placeholder", "no placeholder"),
        ];
        for (sql, duckdb, spark) in cases {
            assert_eq!(expand(sql, Dialect::DuckDb).unwrap(), duckdb, "{sql}");
            assert_eq!(expand(sql, Dialect::Spark).unwrap(), spark, "{sql}");
        }
    }

    #[test]
    fn bad_placeholders_are_errors_that_name_them() {
        for (sql, names) in [
            ("{{set_agg(a, b)}}", "set_agg(a, b)"),
            ("{{set_agg()}}", "set_agg()"),
            ("{{tuple(a)}}", "tuple(a)"),
            ("{{ordered_sum(v)}}", "ordered_sum(v)"),
            ("{{ordered_sum(v; )}}", "ordered_sum(v; )"),
            ("{{median(x)}}", "median"),
            ("{{set_agg x}}", "set_agg x"),
            ("select {{set_agg(x)", "unclosed"),
            ("select x}} from", "without"),
        ] {
            for dialect in [Dialect::DuckDb, Dialect::Spark] {
                let error = expand(sql, dialect).unwrap_err().to_string();
                assert!(error.contains(names), "{sql}: {error}");
            }
        }
    }

    #[test]
    fn the_events_relation_lists_each_file() {
        const ZEROS: &str = "CASE WHEN value = 0 THEN CAST(0 AS DOUBLE) ELSE value END AS value, \
            CASE WHEN battery_pct = 0 THEN CAST(0 AS DOUBLE) ELSE battery_pct END AS battery_pct";
        let files = vec![
            "/lake/a.parquet".to_string(),
            "/lake/it's `b`.parquet".to_string(),
        ];
        assert_eq!(
            Dialect::DuckDb.events_relation(Topic::Iot, &files).unwrap(),
            format!(
                "SELECT * REPLACE ({ZEROS}), epoch_ms(ts) AS ts_ms FROM read_parquet(['/lake/a.parquet', '/lake/it''s `b`.parquet'])"
            )
        );
        assert_eq!(
            Dialect::Spark.events_relation(Topic::Iot, &files).unwrap(),
            format!(
                "SELECT * EXCEPT (value, battery_pct), {ZEROS}, unix_millis(ts) AS ts_ms FROM parquet.`/lake/a.parquet` UNION ALL \
                 SELECT * EXCEPT (value, battery_pct), {ZEROS}, unix_millis(ts) AS ts_ms FROM parquet.`/lake/it's ``b``.parquet`"
            )
        );
        assert!(
            Dialect::DuckDb
                .events_relation(Topic::Funnel, &files)
                .unwrap()
                .starts_with("SELECT * REPLACE (CASE WHEN render_ms = 0 THEN CAST(0 AS DOUBLE) ELSE render_ms END AS render_ms), ")
        );
        for dialect in [Dialect::DuckDb, Dialect::Spark] {
            assert!(dialect.events_relation(Topic::Iot, &[]).is_err());
        }
        for glob in [
            "/lake/*.parquet",
            "/lake/a?.parquet",
            "/la{ke}/a.parquet",
            "/lake/[ab].parquet",
        ] {
            let error = Dialect::Spark
                .events_relation(Topic::Funnel, &[glob.to_string()])
                .unwrap_err()
                .to_string();
            assert!(error.contains(glob) && error.contains("glob"), "{error}");
            Dialect::DuckDb
                .events_relation(Topic::Funnel, &[glob.to_string()])
                .unwrap();
        }
    }

    /// The view files use only what both dialects read alike: no DuckDB-only
    /// function or operator outside a placeholder.
    #[test]
    fn view_files_hold_no_dialect_of_their_own() {
        for view in crate::views::VIEWS {
            let code: String = view
                .sql
                .lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            for banned in [
                "epoch_ms(",
                "//",
                "arg_max(",
                "list(",
                "row(",
                "unix_millis(",
                "collect_",
            ] {
                let outside: String = code
                    .split("{{")
                    .map(|part| part.split_once("}}").map_or(part, |(_, after)| after))
                    .collect();
                assert!(
                    !outside.contains(banned),
                    "{}: {banned} outside a placeholder",
                    view.name
                );
            }
            for dialect in [Dialect::DuckDb, Dialect::Spark] {
                expand(view.sql, dialect).unwrap();
            }
        }
    }
}
