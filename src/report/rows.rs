//! The row sink of `query`: every tenant's rows, drawn from the engine's `Event::Rows` as
//! each tenant's transaction ends, written to stdout as one merged result, each row with its
//! cluster and tenant (and labels, with `--with-labels`). CSV, NDJSON and JSON stream (a
//! tenant's rows are written and dropped); the table keeps its first 1,000 rows to align
//! them and counts the rest.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use crate::engine::fleet_sql::{Rows, Values};
use crate::output::Out;
use crate::tenant::Tenant;

/// Rows the table format shows; the rest are counted.
pub const TABLE_ROWS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people, cut to the terminal's width (the first 1,000 rows).
    Table,
    /// RFC 4180; NULL is an empty field, an empty string is "".
    Csv,
    /// One document (docs/json.md), rows streamed into its `rows` list.
    Json,
    /// One JSON object per row, one per line, written as each tenant finishes.
    Ndjson,
}

impl Format {
    /// Whether the server makes each row a JSON object (numbers stay numbers).
    pub fn json_rows(self) -> bool {
        matches!(self, Format::Json | Format::Ndjson)
    }
}

pub struct RowSink {
    format: Format,
    /// Per tenant id: its labels (with `--with-labels`).
    labels: Option<HashMap<String, crate::labels::Labels>>,
    /// The table shows the cluster column (the config names clusters).
    show_cluster: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    out: Option<Out>,
    /// The columns written (CSV's header, the table's), once a tenant had rows.
    columns: Option<Vec<String>>,
    /// The columns of the first result without rows, for a header when none has rows.
    empty_columns: Option<Vec<String>>,
    rows: u64,
    table: Vec<Vec<String>>,
}

impl RowSink {
    pub fn new(
        format: Format,
        labels: Option<HashMap<String, crate::labels::Labels>>,
        show_cluster: bool,
    ) -> RowSink {
        RowSink {
            format,
            labels,
            show_cluster,
            state: Mutex::new(State::default()),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Rows written (or, in a table, shown and counted).
    pub fn rows(&self) -> u64 {
        self.lock().rows
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One tenant's rows.
    pub fn take(&self, cluster: &str, tenant: &Tenant, rows: &Rows) {
        let mut s = self.lock();
        if rows.is_empty() {
            if s.empty_columns.is_none() && !rows.columns.is_empty() {
                s.empty_columns = Some(rows.columns.clone());
            }
            return;
        }
        s.rows += rows.len() as u64;
        static NONE: crate::labels::Labels = crate::labels::Labels::new();
        let labels = self
            .labels
            .as_ref()
            .map(|l| l.get(tenant.id()).unwrap_or(&NONE));
        match self.format {
            Format::Csv => {
                let s = &mut *s;
                let out = s.out.get_or_insert_with(Out::new);
                if s.columns.is_none() {
                    out.write(&csv_line(self.head(&rows.columns).into_iter().map(Some)));
                    s.columns = Some(rows.columns.clone());
                }
                let Values::Text(values) = &rows.values else {
                    return;
                };
                let shown = labels.map(crate::labels::show);
                for row in values {
                    let lead = [Some(cluster), Some(tenant.id())]
                        .into_iter()
                        .chain(shown.as_deref().map(Some));
                    out.write(&csv_line(
                        lead.map(|v| v.map(str::to_string))
                            .chain(row.iter().cloned()),
                    ));
                }
            }
            Format::Json | Format::Ndjson => {
                let ndjson = self.format == Format::Ndjson;
                let first = !ndjson && s.rows == rows.len() as u64;
                let out = s.out.get_or_insert_with(|| {
                    let mut out = Out::new();
                    if !ndjson {
                        out.write("{\"rows\":[");
                    }
                    out
                });
                let mut head = format!(
                    "{{\"cluster\":{},\"tenant\":{},",
                    json!(cluster),
                    json!(tenant.id())
                );
                if let Some(l) = labels {
                    head.push_str(&format!("\"labels\":{},", json!(l)));
                }
                let (sep, end) = if ndjson { ("", "}\n") } else { (",", "}") };
                for (i, row) in objects(rows).enumerate() {
                    if !(first && i == 0) {
                        out.write(sep);
                    }
                    out.write(&head);
                    out.write("\"row\":");
                    out.write(&row);
                    out.write(end);
                }
                if ndjson {
                    out.flush();
                }
            }
            Format::Table => {
                if s.columns.is_none() {
                    s.columns = Some(rows.columns.clone());
                }
                let Values::Text(values) = &rows.values else {
                    return;
                };
                let room = TABLE_ROWS.saturating_sub(s.table.len());
                let shown = labels.map(crate::labels::show);
                for row in values.iter().take(room) {
                    let mut line = Vec::with_capacity(row.len() + 3);
                    if self.show_cluster {
                        line.push(cluster.to_string());
                    }
                    line.push(tenant.id().to_string());
                    line.extend(shown.clone());
                    line.extend(row.iter().map(|v| cell(v.as_deref())));
                    s.table.push(line);
                }
            }
        }
    }

    /// `cluster, tenant[, labels], columns…`.
    fn head(&self, columns: &[String]) -> Vec<String> {
        let mut head = vec!["cluster".to_string(), "tenant".to_string()];
        if self.labels.is_some() {
            head.push("labels".into());
        }
        head.extend(columns.iter().cloned());
        head
    }

    /// The end of the output. CSV: the header when no tenant had rows; table: the table,
    /// cut to `width`; JSON: the rest of the document (`doc`, whose keys follow `rows`).
    pub fn finish(&self, doc: Option<&Value>, width: Option<usize>) {
        let mut s = self.lock();
        let s = &mut *s;
        match self.format {
            Format::Csv if s.out.is_none() => {
                let columns = s.empty_columns.clone().unwrap_or_default();
                Out::new().write(&csv_line(self.head(&columns).into_iter().map(Some)));
            }
            Format::Json => {
                let out = s.out.get_or_insert_with(|| {
                    let mut out = Out::new();
                    out.write("{\"rows\":[");
                    out
                });
                out.write("]");
                let rest = doc.map(Value::to_string).unwrap_or_default();
                match rest.strip_prefix('{') {
                    Some(r) if r != "}" => out.write(&format!(",{r}\n")),
                    _ => out.write("}\n"),
                }
            }
            Format::Table => {
                let mut head = Vec::new();
                if self.show_cluster {
                    head.push("cluster".to_string());
                }
                head.push("tenant".into());
                if self.labels.is_some() {
                    head.push("labels".into());
                }
                let columns = s.columns.clone().or(s.empty_columns.clone());
                head.extend(columns.unwrap_or_default());
                // By cluster and tenant (each tenant's rows in their order), not as they came.
                let keys = usize::from(self.show_cluster) + 1;
                s.table.sort_by(|a, b| a[..keys].cmp(&b[..keys]));
                let text = table(&head, &s.table, width);
                let more = s.rows.saturating_sub(s.table.len() as u64);
                let mut tail = format!("({} row(s))\n", s.rows);
                if more > 0 {
                    tail = format!(
                        "({} row(s); the first {} shown: --format csv or ndjson prints them all)\n",
                        s.rows,
                        s.table.len()
                    );
                }
                Out::new().write(&format!("{text}{tail}"));
            }
            Format::Csv | Format::Ndjson => {}
        }
        s.out = None;
    }
}

/// Each row as a JSON object text: as the server made it, or from text values.
fn objects(rows: &Rows) -> Box<dyn Iterator<Item = String> + '_> {
    match &rows.values {
        Values::Json(objects) => Box::new(objects.iter().cloned()),
        Values::Text(values) => Box::new(values.iter().map(|row| {
            let map: Map<String, Value> = rows
                .columns
                .iter()
                .cloned()
                .zip(
                    row.iter()
                        .map(|v| v.as_ref().map_or(Value::Null, |v| json!(v))),
                )
                .collect();
            Value::Object(map).to_string()
        })),
    }
}

/// One CSV record (RFC 4180): a field with a comma, a quote, a line break or leading or
/// trailing blanks is quoted (quotes doubled); NULL is an empty field and an empty string
/// `""`, as psql --csv writes them.
pub fn csv_line(fields: impl Iterator<Item = Option<String>>) -> String {
    let mut line = String::new();
    for (i, field) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        let Some(v) = field else { continue };
        let quote = v.is_empty()
            || v.contains([',', '"', '\n', '\r'])
            || v.starts_with(char::is_whitespace)
            || v.ends_with(char::is_whitespace);
        if quote {
            line.push('"');
            line.push_str(&v.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&v);
        }
    }
    line.push('\n');
    line
}

/// A value as a table shows it: NULL empty (as psql), line breaks as `\n`.
fn cell(v: Option<&str>) -> String {
    v.map_or(String::new(), |v| {
        v.replace('\r', "\\r").replace('\n', "\\n")
    })
}

/// Aligned columns, each line cut to `width` (with `…`).
fn table(head: &[String], rows: &[Vec<String>], width: Option<usize>) -> String {
    let widths: Vec<usize> = (0..head.len())
        .map(|c| {
            std::iter::once(&head[c])
                .chain(rows.iter().filter_map(|r| r.get(c)))
                .map(|v| console::measure_text_width(v))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| -> String {
        let text = cells
            .iter()
            .zip(&widths)
            .map(|(v, w)| console::pad_str(v, *w, console::Alignment::Left, None).into_owned())
            .collect::<Vec<_>>()
            .join(" | ");
        let text = text.trim_end().to_string();
        match width {
            Some(w) => console::truncate_str(&text, w, "…").into_owned(),
            None => text,
        }
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut out = format!("{}\n", line(head));
    out.push_str(&format!("{}\n", line(&rule).replace(" | ", "-+-")));
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_must_be_and_tells_null_from_empty() {
        let line = csv_line(
            [
                Some("a".to_string()),
                None,
                Some(String::new()),
                Some("x,y".into()),
                Some("say \"hi\"".into()),
                Some("two\nlines".into()),
            ]
            .into_iter(),
        );
        assert_eq!(line, "a,,\"\",\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\"\n");
    }

    #[test]
    fn a_table_is_aligned_and_cut_to_the_width() {
        let head = vec!["tenant".to_string(), "n".to_string()];
        let rows = vec![vec!["acme".to_string(), "12345".to_string()]];
        let t = table(&head, &rows, None);
        assert_eq!(t, "tenant | n\n-------+------\nacme   | 12345\n");
        let cut = table(&head, &rows, Some(8));
        assert!(
            cut.lines().all(|l| console::measure_text_width(l) <= 8),
            "{cut}"
        );
    }
}
