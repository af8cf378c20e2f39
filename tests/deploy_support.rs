//! Helpers for tests/deploy_envoy_gateway.rs and tests/deploy_istio.rs (each includes
//! this file as a module; built on its own it has no tests):
//!
//! - `eg_json_path` and `json_patch`: Envoy Gateway's way of applying an
//!   EnvoyPatchPolicy operation, reimplemented from its source (v1.6.0 and v1.9.0 do
//!   the same): internal/xds/translator/jsonpatch.go marshals the xDS resource with
//!   protojson (UseProtoNames: snake_case field names), internal/utils/jsonpatch turns
//!   `jsonPath` (github.com/ohler55/ojg) into JSON pointers with `path` appended, and
//!   applies the operation at each with github.com/evanphx/json-patch/v5 (v5.9.11,
//!   EnsurePathExistsOnAdd, negative indices allowed). One patch entry whose
//!   operation fails anywhere is dropped whole. The JSONPath subset is what the
//!   manifests use: `$`, `.name`, `..name`, `['name']`, `[n]`, `*`, and filters
//!   `[?(A == B)]` joined by `&&`, where A and B are `@`/`$` paths or literals.
//! - `snake_case_keys`: Envoy Gateway's golden files are protojson with JSON names
//!   (camelCase); its patches see proto names.
//! - `WasmServer`: serves the module over HTTP, as Envoy Gateway's own server does
//!   for its proxies (there over TLS).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;

pub fn deploy_refs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/deploy-refs")
}

/// One reference file, parsed (YAML, several documents give an array).
pub fn reference(relative: &str) -> Value {
    let path = deploy_refs().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the tests read the published files from ../shared/deploy-refs)",
            path.display()
        )
    });
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------
// protojson names

/// camelCase JSON names turned into proto names; map keys (filter names, extension
/// names, metadata namespaces) are left as they are: none is a plain camelCase word.
pub fn snake_case_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| {
                    let plain = key.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                        && key.chars().all(|c| c.is_ascii_alphanumeric());
                    let key = if plain {
                        key.chars().fold(String::new(), |mut out, c| {
                            if c.is_ascii_uppercase() {
                                out.push('_');
                                out.push(c.to_ascii_lowercase());
                            } else {
                                out.push(c);
                            }
                            out
                        })
                    } else {
                        key.clone()
                    };
                    (key, snake_case_keys(item))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(snake_case_keys).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------
// JSONPath (ojg's Locate, the subset above) to JSON pointers

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Child(String),
    Nth(i64),
    Wildcard,
    Descent,
    Filter(Vec<Comparison>),
}

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    Current(Vec<Step>),
    Root(Vec<Step>),
    Literal(Value),
}

#[derive(Clone, Debug, PartialEq)]
struct Comparison {
    left: Operand,
    equal: bool,
    right: Operand,
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }
    fn eat(&mut self, s: &str) -> bool {
        if self.text[self.at..].starts_with(s.as_bytes()) {
            self.at += s.len();
            true
        } else {
            false
        }
    }
    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }
    fn fail(&self, what: &str) -> String {
        format!(
            "JSONPath {:?}: {what} at {}",
            String::from_utf8_lossy(self.text),
            self.at
        )
    }
    fn name(&mut self) -> Result<String, String> {
        let start = self.at;
        while let Some(c) = self.peek() {
            if c == b'.' || c == b'[' || c == b' ' || c == b')' || c == b'=' || c == b'!' {
                break;
            }
            self.at += 1;
        }
        if start == self.at {
            return Err(self.fail("a name expected"));
        }
        Ok(String::from_utf8_lossy(&self.text[start..self.at]).to_string())
    }
    fn quoted(&mut self) -> Result<String, String> {
        let quote = self.peek().ok_or_else(|| self.fail("a quote expected"))?;
        self.at += 1;
        let start = self.at;
        while self.peek().is_some_and(|c| c != quote) {
            self.at += 1;
        }
        let text = String::from_utf8_lossy(&self.text[start..self.at]).to_string();
        if !self.eat(&(quote as char).to_string()) {
            return Err(self.fail("an unterminated string"));
        }
        Ok(text)
    }
    /// Steps until the end, or (inside a filter) until an operator or `)`.
    fn steps(&mut self, in_filter: bool) -> Result<Vec<Step>, String> {
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                None => return Ok(steps),
                Some(b' ' | b')' | b'=' | b'!' | b'&') if in_filter => return Ok(steps),
                Some(b'.') => {
                    if self.eat("..") {
                        steps.push(Step::Descent);
                        if self.peek() == Some(b'[') {
                            continue;
                        }
                    } else {
                        self.at += 1;
                    }
                    if self.eat("*") {
                        steps.push(Step::Wildcard);
                    } else {
                        steps.push(Step::Child(self.name()?));
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    match self.peek() {
                        Some(b'\'' | b'"') => steps.push(Step::Child(self.quoted()?)),
                        Some(b'*') => {
                            self.at += 1;
                            steps.push(Step::Wildcard);
                        }
                        Some(b'?') => {
                            self.at += 1;
                            let open = self.eat("(");
                            let mut all = vec![self.comparison()?];
                            loop {
                                self.skip_spaces();
                                if self.eat("&&") {
                                    all.push(self.comparison()?);
                                } else {
                                    break;
                                }
                            }
                            if open && !self.eat(")") {
                                return Err(self.fail("')' expected"));
                            }
                            steps.push(Step::Filter(all));
                        }
                        _ => {
                            let start = self.at;
                            while self.peek().is_some_and(|c| c == b'-' || c.is_ascii_digit()) {
                                self.at += 1;
                            }
                            let digits = String::from_utf8_lossy(&self.text[start..self.at]);
                            let n: i64 = digits.parse().map_err(|_| {
                                self.fail("an index, a quoted name, * or ? expected")
                            })?;
                            steps.push(Step::Nth(n));
                        }
                    }
                    if !self.eat("]") {
                        return Err(self.fail("']' expected"));
                    }
                }
                Some(_) if steps.is_empty() && !in_filter => steps.push(Step::Child(self.name()?)),
                Some(_) => return Err(self.fail("'.' or '[' expected")),
            }
        }
    }
    fn operand(&mut self) -> Result<Operand, String> {
        self.skip_spaces();
        match self.peek() {
            Some(b'@') => {
                self.at += 1;
                Ok(Operand::Current(self.steps(true)?))
            }
            Some(b'$') => {
                self.at += 1;
                Ok(Operand::Root(self.steps(true)?))
            }
            Some(b'\'' | b'"') => Ok(Operand::Literal(json!(self.quoted()?))),
            _ => {
                let start = self.at;
                while self
                    .peek()
                    .is_some_and(|c| !matches!(c, b' ' | b')' | b'=' | b'!' | b'&'))
                {
                    self.at += 1;
                }
                let text = String::from_utf8_lossy(&self.text[start..self.at]).to_string();
                serde_json::from_str(&text)
                    .map(Operand::Literal)
                    .map_err(|_| self.fail("an operand expected"))
            }
        }
    }
    fn comparison(&mut self) -> Result<Comparison, String> {
        let left = self.operand()?;
        self.skip_spaces();
        let equal = if self.eat("==") {
            true
        } else if self.eat("!=") {
            false
        } else {
            return Err(self.fail("'==' or '!=' expected (the only operators supported)"));
        };
        let right = self.operand()?;
        self.skip_spaces();
        Ok(Comparison { left, equal, right })
    }
}

fn parse_json_path(text: &str) -> Result<Vec<Step>, String> {
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    parser.eat("$");
    let steps = parser.steps(false)?;
    if steps.is_empty() {
        return Err("Using only Root ('$') in json path expression is not allowed!".into());
    }
    Ok(steps)
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn children(value: &Value) -> Vec<(Seg, &Value)> {
    match value {
        Value::Object(map) => map.iter().map(|(k, v)| (Seg::Key(k.clone()), v)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (Seg::Index(i), v))
            .collect(),
        _ => Vec::new(),
    }
}

fn locate<'a>(
    root: &'a Value,
    node: &'a Value,
    at: Vec<Seg>,
    steps: &[Step],
    out: &mut Vec<(Vec<Seg>, &'a Value)>,
) {
    let Some((step, rest)) = steps.split_first() else {
        out.push((at, node));
        return;
    };
    let go = |seg: Seg, child: &'a Value, out: &mut Vec<(Vec<Seg>, &'a Value)>| {
        let mut path = at.clone();
        path.push(seg);
        locate(root, child, path, rest, out);
    };
    match step {
        Step::Child(name) => {
            if let Some(child) = node.as_object().and_then(|m| m.get(name)) {
                go(Seg::Key(name.clone()), child, out);
            }
        }
        Step::Nth(n) => {
            if let Some(items) = node.as_array() {
                let index = if *n < 0 { items.len() as i64 + n } else { *n };
                if let Some(child) = usize::try_from(index).ok().and_then(|i| items.get(i)) {
                    go(Seg::Index(index as usize), child, out);
                }
            }
        }
        Step::Wildcard => {
            for (seg, child) in children(node) {
                go(seg, child, out);
            }
        }
        Step::Filter(all) => {
            for (seg, child) in children(node) {
                if all.iter().all(|c| compare(root, child, c)) {
                    go(seg, child, out);
                }
            }
        }
        Step::Descent => {
            // The rest applied here and at every node below, in document order.
            locate(root, node, at.clone(), rest, out);
            for (seg, child) in children(node) {
                let mut path = at.clone();
                path.push(seg);
                locate(root, child, path, steps, out);
            }
        }
    }
}

fn operand_value<'a>(root: &'a Value, current: &'a Value, operand: &'a Operand) -> Option<Value> {
    let (start, steps) = match operand {
        Operand::Literal(value) => return Some(value.clone()),
        Operand::Current(steps) => (current, steps),
        Operand::Root(steps) => (root, steps),
    };
    let mut found = Vec::new();
    locate(root, start, Vec::new(), steps, &mut found);
    found.first().map(|(_, v)| (*v).clone())
}

fn compare(root: &Value, current: &Value, comparison: &Comparison) -> bool {
    let left = operand_value(root, current, &comparison.left);
    let right = operand_value(root, current, &comparison.right);
    match (left, right) {
        (Some(l), Some(r)) => (l == r) == comparison.equal,
        (None, None) => comparison.equal,
        _ => !comparison.equal,
    }
}

fn escape_pointer(seg: &Seg) -> String {
    match seg {
        Seg::Key(key) => key.replace('~', "~0").replace('/', "~1"),
        Seg::Index(i) => i.to_string(),
    }
}

/// internal/utils/jsonpatch.ConvertPathToPointers: the pointers `json_path` locates
/// in `document`, each with `path` appended.
pub fn eg_json_path(document: &Value, json_path: &str, path: &str) -> Result<Vec<String>, String> {
    let steps = parse_json_path(json_path)?;
    let mut found = Vec::new();
    locate(document, document, Vec::new(), &steps, &mut found);
    Ok(found
        .into_iter()
        .map(|(segs, _)| {
            let pointer: String = segs
                .iter()
                .map(|s| format!("/{}", escape_pointer(s)))
                .collect();
            if path.is_empty() {
                pointer
            } else {
                format!(
                    "{}/{}",
                    pointer.trim_end_matches('/'),
                    path.trim_start_matches('/')
                )
            }
        })
        .collect())
}

// ---------------------------------------------------------------------------------
// JSON Patch (evanphx/json-patch v5.9.11 with Envoy Gateway's options)

fn split_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("pointer {pointer:?} does not start with /"));
    };
    Ok(rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(key: &str, len: usize, for_insert: bool) -> Result<usize, String> {
    let n: i64 = key
        .parse()
        .map_err(|_| format!("value was not a proper array index: '{key}'"))?;
    let size = if for_insert { len + 1 } else { len } as i64;
    let index = if n < 0 { n + size } else { n };
    if index < 0 || index >= size {
        return Err(format!("Unable to access invalid index: {n}"));
    }
    Ok(index as usize)
}

fn child_mut<'a>(node: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match node {
        Value::Object(map) => map.get_mut(key),
        Value::Array(items) => {
            let len = items.len();
            array_index(key, len, false)
                .ok()
                .and_then(|i| items.get_mut(i))
        }
        _ => None,
    }
}

/// findObject: the container of the pointer's last part.
fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Option<&'a mut Value> {
    let (_, parents) = parts.split_last()?;
    let mut node = doc;
    for part in parents {
        node = child_mut(node, part)?;
    }
    Some(node)
}

fn get<'a>(doc: &'a Value, parts: &[String]) -> Option<&'a Value> {
    let mut node = doc;
    for part in parts {
        node = match node {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(array_index(part, items.len(), false).ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// ensurePathExists: missing containers on the way are created (arrays where the
/// next part is an index or "-", objects elsewhere).
fn ensure_path_exists(doc: &mut Value, parts: &[String]) -> Result<(), String> {
    let mut node = doc;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return Ok(());
        }
        let next = &parts[i + 1];
        let exists = child_mut(node, part).is_some();
        if !exists {
            let container = match next.parse::<i64>() {
                Ok(n) if n < -1 => {
                    return Err(format!(
                        "Unable to ensure path for negative index other than -1: {n}"
                    ))
                }
                Ok(n) => Value::Array(vec![Value::Null; n.max(0) as usize]),
                Err(_) if next == "-" => json!([]),
                Err(_) => json!({}),
            };
            match node {
                Value::Object(map) => {
                    map.insert(part.clone(), container);
                }
                Value::Array(items) => {
                    let index: usize = part.parse().map_err(|_| format!("bad index {part}"))?;
                    while items.len() < index {
                        items.push(Value::Null);
                    }
                    items.insert(index.min(items.len()), container);
                }
                _ => return Err(format!("cannot create {part} in a scalar")),
            }
        }
        node = child_mut(node, part).ok_or("ensurePathExists lost its way")?;
    }
    Ok(())
}

fn add_at(doc: &mut Value, parts: &[String], value: Value) -> Result<(), String> {
    let Some(last) = parts.last() else {
        *doc = value;
        return Ok(());
    };
    let parent = parent_mut(doc, parts).ok_or("doc is missing path")?;
    match parent {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            if last == "-" {
                items.push(value);
            } else {
                let index = array_index(last, items.len(), true)?;
                items.insert(index, value);
            }
            Ok(())
        }
        _ => Err("parent is not a container".into()),
    }
}

fn remove_at(doc: &mut Value, parts: &[String]) -> Result<Value, String> {
    let last = parts.last().ok_or("cannot remove the whole document")?;
    let parent = parent_mut(doc, parts).ok_or("doc is missing path")?;
    match parent {
        Value::Object(map) => map
            .remove(last)
            .ok_or_else(|| format!("unable to remove nonexistent key: {last}")),
        Value::Array(items) => {
            let index = array_index(last, items.len(), false)?;
            Ok(items.remove(index))
        }
        _ => Err("parent is not a container".into()),
    }
}

/// One RFC 6902 operation (`op`, `path`, `from`, `value`) on `doc`.
pub fn json_patch(doc: &mut Value, operation: &Value) -> Result<(), String> {
    let op = operation["op"].as_str().ok_or("no op")?;
    let path = split_pointer(operation["path"].as_str().unwrap_or(""))?;
    let from = || split_pointer(operation["from"].as_str().unwrap_or(""));
    match op {
        "add" => {
            ensure_path_exists(doc, &path)?;
            add_at(doc, &path, operation["value"].clone())
        }
        "remove" => remove_at(doc, &path).map(|_| ()),
        "replace" if path.is_empty() => {
            *doc = operation["value"].clone();
            Ok(())
        }
        "replace" => {
            let target = parent_mut(doc, &path)
                .and_then(|p| child_mut(p, path.last().unwrap()))
                .ok_or("replace operation does not apply: doc is missing key")?;
            *target = operation["value"].clone();
            Ok(())
        }
        "copy" => {
            let value = get(doc, &from()?)
                .ok_or("copy operation does not apply: doc is missing from path")?
                .clone();
            if parent_mut(doc, &path).is_none() && !path.is_empty() {
                return Err(
                    "copy operation does not apply: doc is missing destination path".into(),
                );
            }
            add_at(doc, &path, value)
        }
        "move" => {
            let value = remove_at(doc, &from()?)?;
            add_at(doc, &path, value)
        }
        "test" => match get(doc, &path) {
            Some(value) if *value == operation["value"] => Ok(()),
            None if operation["value"].is_null() => Ok(()),
            _ => Err("testing value failed".into()),
        },
        other => Err(format!("unsupported operation {other}")),
    }
}

/// One EnvoyPatchPolicy jsonPatches entry applied to the resource it names, as
/// processJSONPatches does: the operation validated as ir.JSONPatchOperation.Validate
/// does, applied at every pointer its jsonPath finds; any failure drops the entry.
pub fn apply_eg_patch(resource: &mut Value, operation: &Value) -> Result<(), String> {
    let op = operation["op"].as_str().ok_or("no op")?;
    let has = |key: &str| operation.get(key).is_some_and(|v| !v.is_null());
    if !has("path") && !has("jsonPath") {
        return Err("a patch operation must specify a path or jsonPath".into());
    }
    match op {
        "add" | "replace" | "test" if !has("value") || has("from") => {
            return Err(format!("the {op} operation needs a value and no from"))
        }
        "remove" if has("value") || has("from") => {
            return Err("value and from can't be specified with the remove operation".into())
        }
        "move" | "copy" if !has("from") || has("value") => {
            return Err(format!("the {op} operation needs from and no value"))
        }
        _ => {}
    }
    let path = operation["path"].as_str().unwrap_or("");
    let pointers = match operation["jsonPath"].as_str() {
        Some(json_path) => {
            let pointers = eg_json_path(resource, json_path, path)?;
            if pointers.is_empty() {
                return Err(format!(
                    "no jsonPointers were found while evaluating the jsonPath: '{json_path}'"
                ));
            }
            pointers
        }
        None => vec![path.to_string()],
    };
    let mut document = resource.clone();
    for pointer in pointers {
        let mut single = operation.clone();
        single["path"] = json!(pointer);
        json_patch(&mut document, &single)
            .map_err(|e| format!("unable to apply patch: op={op} path={pointer} err: {e}"))?;
    }
    *resource = document;
    Ok(())
}

// ---------------------------------------------------------------------------------
// The module over HTTP

/// A plain HTTP server answering every GET with the module's bytes.
pub struct WasmServer {
    pub port: u16,
    pub sha256: String,
}

impl WasmServer {
    pub fn start(module: &std::path::Path) -> WasmServer {
        let bytes = std::fs::read(module).unwrap();
        let output = std::process::Command::new("sha256sum")
            .arg(module)
            .output()
            .expect("sha256sum");
        let sha256 = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let bytes = bytes.clone();
                std::thread::spawn(move || {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/wasm\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&bytes);
                });
            }
        });
        WasmServer { port, sha256 }
    }
}

/// The Kubernetes objects of deploy/<dir>/*.yaml.
pub fn deploy_objects(dir: &str) -> Vec<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            if value.get("apiVersion").is_some() {
                objects.push(value);
            }
        }
    }
    objects
}

/// The one object of `kind` under deploy/<dir>.
pub fn deploy_object(dir: &str, kind: &str) -> Value {
    let found: Vec<Value> = deploy_objects(dir)
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} under deploy/{dir}");
    found.into_iter().next().unwrap()
}

/// A file-based xDS source for `resources` (one DiscoveryResponse file).
pub fn xds_file(dir: &std::path::Path, name: &str, resources: &[Value]) -> Value {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, json!({"resources": resources}).to_string()).unwrap();
    json!({"path_config_source": {"path": file.display().to_string()}, "resource_api_version": "V3"})
}

/// The plugin configuration of the cooldown checks: one failure cools a model for a
/// minute.
pub fn cooldown_plugin() -> Value {
    json!({
        "chains": {"a+status-502": ["b"]},
        "cooldown_failures": 1,
        "cooldown_window_ms": 60000,
        "cooldown_ms": 60000
    })
}
