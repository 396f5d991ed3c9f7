//! What `tunnox admin` prints: aligned tables and `key  value` lists for people, or the answer's
//! `data` as pretty JSON with `--json`.

use serde_json::Value;

/// One column of a table: its title and how a row's cell is written.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The header.
    pub title: &'static str,
    /// The cell of one item.
    pub cell: fn(&Value) -> String,
}

/// One page of a list, or every page with `--all`.
#[derive(Debug)]
pub struct Page {
    /// The items.
    pub items: Vec<Value>,
    /// How many exist in all.
    pub total: u64,
    /// Where this page starts.
    pub offset: u64,
}

impl Page {
    /// The `{items, total, offset, limit}` form printed by `--json`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "items": self.items,
            "total": self.total,
            "offset": self.offset,
            "limit": self.items.len(),
        })
    }
}

/// The text being printed: stdout, and notes for stderr.
#[derive(Debug, Default)]
pub struct Output {
    /// `--json`.
    pub json: bool,
    /// For stdout.
    pub stdout: String,
    /// For stderr (hints that must not mix with a table piped elsewhere).
    pub notes: Vec<String>,
}

impl Output {
    /// A list: a table, or its page as JSON.
    pub fn list(&mut self, page: &Page, columns: &[Column]) {
        if self.json {
            self.pretty(&page.to_json());
            return;
        }
        let rows: Vec<Vec<String>> = page
            .items
            .iter()
            .map(|item| columns.iter().map(|c| clean(&(c.cell)(item))).collect())
            .collect();
        let titles: Vec<String> = columns.iter().map(|c| c.title.to_owned()).collect();
        self.stdout.push_str(&table(&titles, &rows));
        let shown = page.items.len() as u64;
        let after = page.offset + shown;
        if after < page.total {
            self.notes.push(format!(
                "{shown} of {} shown (from {}); --offset {after} or --all for more",
                page.total, page.offset
            ));
        }
    }

    /// One object: `key  value` lines (nested keys dotted), or pretty JSON.
    pub fn object(&mut self, value: &Value) {
        if self.json {
            self.pretty(value);
            return;
        }
        let mut rows = Vec::new();
        flatten("", value, &mut rows);
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (key, cell) in rows {
            let line = format!("{key:<width$}  {}", clean(&cell));
            self.stdout.push_str(line.trim_end());
            self.stdout.push('\n');
        }
    }

    /// A sentence for people, or `data` as JSON.
    pub fn message(&mut self, sentence: &str, data: &Value) {
        if self.json {
            self.pretty(data);
        } else {
            self.stdout.push_str(&clean(sentence));
            self.stdout.push('\n');
        }
    }

    fn pretty(&mut self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        self.stdout.push_str(&text);
        self.stdout.push('\n');
    }
}

/// Rows under titles, columns two spaces apart, the last one not padded.
fn table(titles: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = titles.iter().map(|t| t.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(titles).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `value` as `(dotted.key, cell)` rows.
fn flatten(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, rows);
            }
        }
        _ => {
            let leaf = prefix.rsplit('.').next().unwrap_or(prefix);
            rows.push((prefix.to_owned(), field(leaf, value)));
        }
    }
}

/// A named field's value, written by what its name says it holds.
pub fn field(name: &str, value: &Value) -> String {
    if name.ends_with("_at") || name == "last_seen" || name.ends_with("deadline") {
        time(value)
    } else if name.contains("bytes") && value.as_u64().is_some_and(|n| n >= 1024) {
        format!("{} ({})", text(value), bytes(value))
    } else {
        text(value)
    }
}

/// Control characters (from labels or names anyone may set) made harmless for a terminal.
fn clean(cell: &str) -> String {
    cell.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect::<String>()
        .replace('\n', " ")
}

/// A plain value: `-` for none, `yes`/`no`, strings bare, anything else as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC; `-` for none.
pub fn time(value: &Value) -> String {
    let Some(ms) = value.as_u64() else {
        return text(value);
    };
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The calendar date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A byte count in binary units, e.g. `1.5 MiB`.
pub fn bytes(value: &Value) -> String {
    let Some(n) = value.as_u64() else {
        return text(value);
    };
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut size = n as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

/// A limit in bytes where 0 means none.
pub fn byte_limit(value: &Value) -> String {
    match value.as_u64() {
        Some(0) => "unlimited".into(),
        _ => bytes(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_note_more_pages() {
        let columns = [
            Column {
                title: "ID",
                cell: |v| text(&v["id"]),
            },
            Column {
                title: "NAME",
                cell: |v| text(&v["name"]),
            },
        ];
        let page = Page {
            items: vec![
                json!({"id": 7, "name": "alice"}),
                json!({"id": 12345, "name": null}),
            ],
            total: 5,
            offset: 0,
        };
        let mut out = Output::default();
        out.list(&page, &columns);
        assert_eq!(out.stdout, "ID     NAME\n7      alice\n12345  -\n");
        assert_eq!(out.notes.len(), 1);
        assert!(out.notes[0].contains("--offset 2"), "{:?}", out.notes);
    }

    #[test]
    fn objects_flatten_and_json_prints_data() {
        let user = json!({"id": 1, "name": "bob\u{1b}[2J", "quota": {"monthly_traffic_bytes": 2048}, "created_at": 86_400_000});
        let mut out = Output::default();
        out.object(&user);
        assert!(
            out.stdout
                .contains("quota.monthly_traffic_bytes  2048 (2.0 KiB)"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains("created_at                   1970-01-02 00:00:00"),
            "{}",
            out.stdout
        );
        assert!(
            !out.stdout.contains('\u{1b}'),
            "no terminal escapes get through"
        );
        let mut json_out = Output {
            json: true,
            ..Output::default()
        };
        json_out.object(&user);
        let back: Value = serde_json::from_str(&json_out.stdout).unwrap();
        assert_eq!(back, user);
    }

    #[test]
    fn times_and_sizes_read_well() {
        assert_eq!(time(&json!(1_700_000_000_123u64)), "2023-11-14 22:13:20");
        assert_eq!(time(&json!(951_782_400_000u64)), "2000-02-29 00:00:00");
        assert_eq!(time(&Value::Null), "-");
        assert_eq!(bytes(&json!(1536)), "1.5 KiB");
        assert_eq!(bytes(&json!(10)), "10 B");
        assert_eq!(byte_limit(&json!(0)), "unlimited");
    }
}
