//! README's "Configuration reference" table, held to the parser in `src/config.rs`:
//! every field the parser accepts has a row, every row names a field the parser
//! accepts (with its example, where the row says), and every default written as a
//! JSON value is the parser's own. No Envoy needed.
//!
//! The parser's own lists come from its errors on an unknown field (each names the
//! fields it expected); the two fields a rule reads before its settings (`name`,
//! `match`) are on no list, so they are read from `parse_rules`' source.

// Test code: a failed unwrap is a failed test, as clippy.toml allows in #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ai_fallback::config::{Config, ConfigError};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;

const SECTION: &str = "## Configuration reference";

/// One row of the table.
#[derive(Debug)]
struct Row {
    name: String,
    place: String,
    default: Option<Value>,
    example: Value,
}

fn repo_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first `code span` of a table cell.
fn code_span(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

fn rows() -> Vec<Row> {
    let readme = repo_file("README.md");
    let start = readme
        .find(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {SECTION:?}"));
    let section = &readme[start + SECTION.len() + 2..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let table: Vec<&str> = section
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .collect();
    assert!(table.len() > 2, "no table in {SECTION:?}");
    let header: Vec<&str> = table[0]
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "field",
            "where",
            "type",
            "default",
            "what it does",
            "example"
        ],
        "the table's columns"
    );
    table[2..]
        .iter()
        .map(|line| {
            assert!(
                !line.contains("\\|"),
                "an escaped | would break the columns: {line}"
            );
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 6, "a row of six cells: {line}");
            let name = code_span(cells[0])
                .unwrap_or_else(|| panic!("the field in backticks: {line}"))
                .to_string();
            let json_of = |text: &str, what: &str| -> Value {
                serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{name}: the {what} `{text}` is not JSON: {e}"))
            };
            // A default that starts with a code span is a value; any other is prose.
            let default = cells[3]
                .starts_with('`')
                .then(|| json_of(code_span(cells[3]).unwrap(), "default"));
            let example_text = cells[5]
                .strip_prefix('`')
                .and_then(|cell| cell.strip_suffix('`'))
                .unwrap_or_else(|| panic!("{name}: the example is one code span: {line}"));
            Row {
                example: json_of(example_text, "example"),
                place: cells[1].to_string(),
                name,
                default,
            }
        })
        .collect()
}

fn parse(document: &Value) -> Result<Config, ConfigError> {
    Config::parse(document.to_string().as_bytes())
}

/// The fields an error on an unknown field says the parser expected there.
fn expected_fields(document: Value) -> BTreeSet<String> {
    let error = parse(&document).expect_err("a made-up field is refused");
    let list = error
        .message
        .split_once("expected one of ")
        .or_else(|| error.message.split_once("expected "))
        .unwrap_or_else(|| panic!("{document}: the error lists the fields: {error}"))
        .1;
    list.split(", ").map(str::to_string).collect()
}

/// The string literals `parse_rules` matches a rule's field names against.
fn rule_fields_in_source() -> BTreeSet<String> {
    let source = repo_file("src/config.rs");
    let start = source
        .find("fn parse_rules(")
        .expect("parse_rules in src/config.rs");
    let body = &source[start..];
    let body = &body[..body[1..].find("\nfn ").map_or(body.len(), |end| end + 1)];
    body.match_indices("\" =>")
        .filter_map(|(end, _)| {
            let literal_start = body[..end].rfind('"')? + 1;
            let literal = &body[literal_start..end];
            literal
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
                .then(|| literal.to_string())
        })
        .collect()
}

/// Every field the parser accepts, named as the table names them.
fn parser_fields() -> BTreeSet<String> {
    const MADE_UP: &str = "made_up_field";
    let mut fields = BTreeSet::new();
    let top_level = expected_fields(json!({ MADE_UP: 1 }));
    assert!(top_level.contains("chains"), "{top_level:?}");
    fields.extend(top_level.iter().cloned());
    // A rule's settings are the top level's: its error lists the same names.
    let in_rule = expected_fields(json!({"rules": [{"name": "r", MADE_UP: 1}]}));
    assert_eq!(in_rule, top_level, "a rule's settings are the top level's");
    let rule_own = rule_fields_in_source();
    assert_eq!(rule_own.len(), 2, "name and match: {rule_own:?}");
    fields.extend(rule_own.iter().map(|name| format!("rules[].{name}")));
    let nested = [
        (
            "rules[].match.",
            json!({"rules": [{"name": "r", "match": { MADE_UP: "x" }}]}),
        ),
        (
            "<entry>.",
            json!({"chains": {"m": [{"model": "x", MADE_UP: "x"}]}}),
        ),
        (
            "providers.<name>.",
            json!({"providers": {"p": { MADE_UP: "x" }}}),
        ),
        ("client_chains.", json!({"client_chains": { MADE_UP: [] }})),
    ];
    for (prefix, document) in nested {
        fields.extend(
            expected_fields(document)
                .into_iter()
                .map(|name| format!("{prefix}{name}")),
        );
    }
    // A chain entry may also be a bare model name.
    fields.insert("<entry>".to_string());
    fields
}

/// A document that sets the row's field to `value`, and the same document without
/// it, in the place the row's name says.
fn documents(name: &str, value: &Value) -> (Value, Value) {
    let in_rule = |fields: Value| json!({"rules": [fields]});
    if let Some(field) = name.strip_prefix("rules[].match.") {
        let base = json!({"name": "r", "match": {}});
        let mut with = base.clone();
        with["match"][field] = value.clone();
        return (in_rule(with), in_rule(base));
    }
    if let Some(field) = name.strip_prefix("rules[].") {
        let base = json!({"name": "r"});
        let mut with = base.clone();
        with[field] = value.clone();
        return (in_rule(with), in_rule(base));
    }
    if name == "<entry>" {
        return (json!({"chains": {"m": [value]}}), json!({}));
    }
    if let Some(field) = name.strip_prefix("<entry>.") {
        // A provider named by an entry must be configured.
        let providers = match (field, value.as_str()) {
            ("provider", Some(provider)) => json!({ provider: {} }),
            _ => json!({}),
        };
        let mut entry = json!({"model": "m2"});
        entry[field] = value.clone();
        return (
            json!({"providers": providers, "chains": {"m": [entry]}}),
            json!({"providers": providers}),
        );
    }
    if let Some(field) = name.strip_prefix("providers.<name>.") {
        return (
            json!({"providers": {"p": { field: value }}}),
            json!({"providers": {"p": {}}}),
        );
    }
    if let Some(field) = name.strip_prefix("client_chains.") {
        return (json!({"client_chains": { field: value }}), json!({}));
    }
    assert!(
        name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "a field name the test does not know how to place: {name}"
    );
    (json!({ name: value }), json!({}))
}

#[test]
fn every_field_the_parser_accepts_is_in_the_table() {
    let in_table: BTreeSet<String> = rows().into_iter().map(|row| row.name).collect();
    let missing: Vec<String> = parser_fields().difference(&in_table).cloned().collect();
    assert!(
        missing.is_empty(),
        "README's {SECTION:?} lacks fields the parser accepts: {missing:?}"
    );
}

#[test]
fn every_field_in_the_table_is_accepted_with_its_example() {
    let accepted = parser_fields();
    let rows = rows();
    let mut seen = BTreeSet::new();
    for row in &rows {
        assert!(seen.insert(&row.name), "{} has two rows", row.name);
        assert!(
            accepted.contains(&row.name),
            "the table names {:?}, which the parser does not accept",
            row.name
        );
        let (with, _) = documents(&row.name, &row.example);
        if let Err(error) = parse(&with) {
            panic!("{}: the example {with} is refused: {error}", row.name);
        }
        // "top level, rule": a rule takes it too; "top level": only the top level.
        if !row.name.contains(['.', '[', '<']) {
            let in_rule = json!({"rules": [{"name": "r", &row.name: row.example}]});
            match (row.place.as_str(), parse(&in_rule)) {
                ("top level, rule", Ok(_)) => {}
                ("top level, rule", Err(error)) => {
                    panic!("{}: refused in a rule: {error}", row.name)
                }
                ("top level", Err(error)) => {
                    assert_eq!(error.field, "rules[0].".to_string() + &row.name)
                }
                ("top level", Ok(_)) => {
                    panic!("{}: a rule takes it, say `top level, rule`", row.name)
                }
                (place, _) => panic!("{}: `where` is {place:?}", row.name),
            }
        }
    }
}

#[test]
fn made_up_fields_are_refused_in_every_place() {
    for name in [
        "made_up",
        "rules[].made_up",
        "rules[].match.made_up",
        "<entry>.made_up",
        "providers.<name>.made_up",
        "client_chains.made_up",
    ] {
        let (document, _) = documents(name, &json!("x"));
        let error = parse(&document).expect_err(name);
        assert!(
            error.field.ends_with("made_up") && error.message.contains("unknown field"),
            "{document}: {error}"
        );
    }
}

#[test]
fn defaults_in_the_table_are_the_parsers() {
    let mut checked = 0;
    for row in rows() {
        let Some(default) = &row.default else {
            continue;
        };
        let (with, without) = documents(&row.name, default);
        let (with, without) = (parse(&with), parse(&without));
        assert!(without.is_ok(), "{}: {without:?}", row.name);
        assert_eq!(
            with, without,
            "{}: setting it to the table's default `{default}` changes the configuration",
            row.name
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} defaults were values");
}
