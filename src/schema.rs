//! Tenant schemas: parse the declarative files of `tenant-schemas/`, validate
//! records against one schema version, and apply the declared migrations.
//!
//! The file format is described in `tenant-schemas/README.md`. Every file carries
//! `format = 1`; the schemas shipped in the repository are embedded in the binary,
//! so a host needs no files beside it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of the schema file format itself. Part of the format: never change.
pub const SCHEMA_FORMAT_V1: u32 = 1;

/// The schema files shipped with Coffer, embedded at build time.
const EMBEDDED: &[(&str, &str)] = &[
    ("crm/v1.toml", include_str!("../tenant-schemas/crm/v1.toml")),
    ("crm/v2.toml", include_str!("../tenant-schemas/crm/v2.toml")),
    ("crm/v3.toml", include_str!("../tenant-schemas/crm/v3.toml")),
    (
        "helpdesk/v1.toml",
        include_str!("../tenant-schemas/helpdesk/v1.toml"),
    ),
    (
        "helpdesk/v2.toml",
        include_str!("../tenant-schemas/helpdesk/v2.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema file {file}: {message}")]
    File { file: String, message: String },
    #[error("unknown schema {0:?}")]
    UnknownSchema(String),
    #[error("schema {0:?} has no version {1}")]
    UnknownVersion(String, u32),
}

/// Why a record does not fit its collection. Shown to the client as a 422.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("a record must be a JSON object")]
    NotAnObject,
    #[error("unknown field {0:?}")]
    UnknownField(String),
    #[error("field {field:?} must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("missing required field {0:?}")]
    MissingField(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Integer,
    Float,
    Boolean,
    /// An RFC 3339 date-time string, e.g. `2026-11-23T10:00:00Z`.
    Timestamp,
    /// Any JSON value, nested objects and arrays included.
    Json,
}

impl FieldType {
    fn describe(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Integer => "an integer",
            FieldType::Float => "a number",
            FieldType::Boolean => "a boolean",
            FieldType::Timestamp => "an RFC 3339 timestamp string",
            FieldType::Json => "JSON",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            FieldType::String => value.is_string(),
            FieldType::Integer => value.is_i64() || value.is_u64(),
            FieldType::Float => value.is_number(),
            FieldType::Boolean => value.is_boolean(),
            FieldType::Timestamp => value.as_str().is_some_and(is_rfc3339),
            FieldType::Json => true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    #[serde(rename = "type")]
    pub kind: FieldType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub indexed: bool,
    #[serde(default)]
    pub unique: bool,
    /// Compared ignoring case (after NFC), for uniqueness and lookups: two
    /// spellings of one e-mail address are one value. The value is stored as
    /// written. Only for indexed or unique strings.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_insensitive: bool,
}

impl Field {
    /// Unique fields are looked up through the same blind index as indexed ones.
    pub fn is_indexed(&self) -> bool {
        self.indexed || self.unique
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collection {
    #[serde(default)]
    pub description: String,
    pub fields: BTreeMap<String, Field>,
}

/// One step from the previous version to this one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MigrationStep {
    AddCollection {
        collection: String,
    },
    AddField {
        collection: String,
        field: String,
        #[serde(default)]
        default: Option<toml::Value>,
    },
    RenameField {
        collection: String,
        from: String,
        to: String,
    },
    RemoveField {
        collection: String,
        field: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub format: u32,
    pub name: String,
    pub version: u32,
    #[serde(default)]
    pub description: String,
    pub collections: BTreeMap<String, Collection>,
    /// How a record of `version - 1` becomes a record of this version.
    #[serde(default)]
    pub migration: Vec<MigrationStep>,
}

impl Schema {
    pub fn parse(file: &str, text: &str) -> Result<Schema, SchemaError> {
        let fail = |message: String| SchemaError::File {
            file: file.to_string(),
            message,
        };
        let schema: Schema = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if schema.format != SCHEMA_FORMAT_V1 {
            return Err(fail(format!("unsupported format {}", schema.format)));
        }
        if schema.version == 0 {
            return Err(fail("versions start at 1".into()));
        }
        for (name, collection) in &schema.collections {
            if !is_identifier(name) {
                return Err(fail(format!(
                    "collection name {name:?} is not an identifier"
                )));
            }
            for (field, spec) in &collection.fields {
                if !is_identifier(field) || field == "id" {
                    return Err(fail(format!("field name {field:?} is reserved or invalid")));
                }
                if spec.case_insensitive && (spec.kind != FieldType::String || !spec.is_indexed()) {
                    return Err(fail(format!(
                        "field {name}.{field}: case_insensitive needs an indexed or unique string"
                    )));
                }
            }
        }
        Ok(schema)
    }

    pub fn collection(&self, name: &str) -> Option<&Collection> {
        self.collections.get(name)
    }

    /// Applies this version's migration steps to a record of the previous version.
    pub fn migrate_record(&self, collection: &str, record: &mut Map<String, Value>) {
        for step in &self.migration {
            match step {
                MigrationStep::AddCollection { .. } => {}
                MigrationStep::AddField {
                    collection: c,
                    field,
                    default: Some(default),
                } if c == collection && !record.contains_key(field) => {
                    record.insert(field.clone(), toml_to_json(default));
                }
                MigrationStep::RenameField {
                    collection: c,
                    from,
                    to,
                } if c == collection => {
                    if let Some(value) = record.remove(from) {
                        record.insert(to.clone(), value);
                    }
                }
                MigrationStep::RemoveField {
                    collection: c,
                    field,
                } if c == collection => {
                    record.remove(field);
                }
                _ => {}
            }
        }
    }
}

impl Collection {
    /// Checks a record (without its `id`) against this collection's fields.
    pub fn validate(&self, record: &Value) -> Result<(), RecordError> {
        let object = record.as_object().ok_or(RecordError::NotAnObject)?;
        for (name, value) in object {
            let field = self
                .fields
                .get(name)
                .ok_or_else(|| RecordError::UnknownField(name.clone()))?;
            // A null is the same as an absent optional field.
            if value.is_null() && !field.required {
                continue;
            }
            if !field.kind.accepts(value) {
                return Err(RecordError::WrongType {
                    field: name.clone(),
                    expected: field.kind.describe(),
                });
            }
        }
        for (name, field) in &self.fields {
            if field.required && object.get(name).is_none_or(Value::is_null) {
                return Err(RecordError::MissingField(name.clone()));
            }
        }
        Ok(())
    }
}

/// The canonical bytes of a field value, as fed to the blind index and
/// compared for uniqueness: strings in Unicode NFC (so that the composed and
/// decomposed spellings of "é" are one value), lowercased too for a field
/// declared `case_insensitive`; other values as their JSON text.
pub fn index_form(field: &Field, value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => {
            let nfc = icu_normalizer::ComposingNormalizerBorrowed::new_nfc();
            let text = nfc.normalize(text);
            if field.case_insensitive {
                nfc.normalize(&text.to_lowercase())
                    .into_owned()
                    .into_bytes()
            } else {
                text.into_owned().into_bytes()
            }
        }
        other => other.to_string().into_bytes(),
    }
}

/// Whether two values of `field` are the same value for its index.
pub fn same_indexed_value(field: &Field, a: &Value, b: &Value) -> bool {
    index_form(field, a) == index_form(field, b)
}

/// The other byte strings under which an index written before
/// normalisation may hold `value` (its bytes as given, and its NFD
/// spelling): lookups and the uniqueness check look there too, until an
/// upgrade rewrites the index.
pub fn legacy_index_forms(field: &Field, value: &Value) -> Vec<Vec<u8>> {
    let Value::String(text) = value else {
        return Vec::new();
    };
    let current = index_form(field, value);
    let nfd = icu_normalizer::DecomposingNormalizerBorrowed::new_nfd();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for key in [
        text.as_bytes().to_vec(),
        nfd.normalize(text).into_owned().into_bytes(),
    ] {
        if key != current && !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// Parses a query-string value into the typed JSON value of a field, so that
/// `?age=42` finds the integer 42.
pub fn parse_query_value(field: &Field, raw: &str) -> Option<Value> {
    match field.kind {
        FieldType::String | FieldType::Timestamp => Some(Value::String(raw.to_string())),
        FieldType::Integer => raw.parse::<i64>().ok().map(Value::from),
        FieldType::Float => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        FieldType::Boolean => raw.parse::<bool>().ok().map(Value::Bool),
        FieldType::Json => serde_json::from_str(raw).ok(),
    }
}

/// Every schema and version a host knows.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    schemas: BTreeMap<String, BTreeMap<u32, Schema>>,
}

impl Registry {
    /// The schemas embedded in the binary.
    pub fn embedded() -> Result<Registry, SchemaError> {
        let mut registry = Registry::default();
        for (file, text) in EMBEDDED {
            registry.insert(file, Schema::parse(file, text)?)?;
        }
        Ok(registry)
    }

    /// Loads every `*.toml` under `dir/<schema>/`.
    pub fn from_dir(dir: &Path) -> Result<Registry, SchemaError> {
        let mut registry = Registry::default();
        let io = |e: std::io::Error| SchemaError::File {
            file: dir.display().to_string(),
            message: e.to_string(),
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path).map_err(io)? {
                    let file = inner.map_err(io)?.path();
                    if file.extension().is_some_and(|e| e == "toml") {
                        files.push(file);
                    }
                }
            }
        }
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(io)?;
            let name = file.display().to_string();
            registry.insert(&name, Schema::parse(&name, &text)?)?;
        }
        Ok(registry)
    }

    fn insert(&mut self, file: &str, schema: Schema) -> Result<(), SchemaError> {
        let versions = self.schemas.entry(schema.name.clone()).or_default();
        if versions.contains_key(&schema.version) {
            return Err(SchemaError::File {
                file: file.to_string(),
                message: format!("duplicate version {} of {}", schema.version, schema.name),
            });
        }
        versions.insert(schema.version, schema);
        Ok(())
    }

    pub fn get(&self, name: &str, version: u32) -> Result<&Schema, SchemaError> {
        self.schemas
            .get(name)
            .ok_or_else(|| SchemaError::UnknownSchema(name.to_string()))?
            .get(&version)
            .ok_or_else(|| SchemaError::UnknownVersion(name.to_string(), version))
    }

    pub fn newest(&self, name: &str) -> Result<&Schema, SchemaError> {
        self.schemas
            .get(name)
            .and_then(|versions| versions.values().next_back())
            .ok_or_else(|| SchemaError::UnknownSchema(name.to_string()))
    }

    pub fn all(&self) -> impl Iterator<Item = &Schema> {
        self.schemas.values().flat_map(|versions| versions.values())
    }

    /// Checks that every version after the first declares a migration that turns a
    /// valid record of the previous version into a valid record of this one.
    pub fn check_migrations(&self) -> Result<(), String> {
        for versions in self.schemas.values() {
            let mut previous: Option<&Schema> = None;
            for schema in versions.values() {
                if let Some(prev) = previous {
                    if schema.version != prev.version + 1 {
                        return Err(format!(
                            "{}: version {} follows {}",
                            schema.name, schema.version, prev.version
                        ));
                    }
                    check_migration(prev, schema)?;
                }
                previous = Some(schema);
            }
        }
        Ok(())
    }
}

/// Builds a full sample record for every collection of `from` (every field set),
/// migrates it, and validates it against `to`; also checks that every collection
/// and field that changed is named by a step.
fn check_migration(from: &Schema, to: &Schema) -> Result<(), String> {
    let name = format!("{} v{} -> v{}", to.name, from.version, to.version);
    for (collection_name, collection) in &to.collections {
        let Some(old) = from.collection(collection_name) else {
            let declared = to.migration.iter().any(|step| {
                matches!(step, MigrationStep::AddCollection { collection } if collection == collection_name)
            });
            if !declared {
                return Err(format!(
                    "{name}: new collection {collection_name} has no add_collection step"
                ));
            }
            continue;
        };
        for variant in [true, false] {
            let mut record = sample_record(old, variant);
            to.migrate_record(collection_name, &mut record);
            collection
                .validate(&Value::Object(record))
                .map_err(|e| format!("{name}: {collection_name}: {e}"))?;
        }
    }
    for collection_name in from.collections.keys() {
        if !to.collections.contains_key(collection_name) {
            return Err(format!(
                "{name}: collection {collection_name} disappears; removing data is not a migration step"
            ));
        }
    }
    Ok(())
}

/// A sample record: every field (`all_fields`) or only the required ones.
fn sample_record(collection: &Collection, all_fields: bool) -> Map<String, Value> {
    let mut record = Map::new();
    for (name, field) in &collection.fields {
        if !all_fields && !field.required {
            continue;
        }
        let value = match field.kind {
            FieldType::String => Value::from("sample"),
            FieldType::Integer => Value::from(7),
            FieldType::Float => Value::from(1.5),
            FieldType::Boolean => Value::from(true),
            FieldType::Timestamp => Value::from("2026-11-23T10:00:00Z"),
            FieldType::Json => serde_json::json!({"nested": [1, "two"]}),
        };
        record.insert(name.clone(), value);
    }
    record
}

fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::from(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Collection and field names: ASCII letters, digits and `_`, starting with a letter.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Strict RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
            .then(|| {
                b[range]
                    .iter()
                    .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
            })
    };
    let (Some(_year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return false;
    }
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return false;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let frac = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return false;
        }
        rest = &rest[1 + frac..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
                && (h1 - b'0') * 10 + (h2 - b'0') <= 23
                && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_schema_file_loads_and_every_migration_holds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tenant-schemas");
        let from_files = Registry::from_dir(&dir).expect("load tenant-schemas/");
        let embedded = Registry::embedded().expect("embedded schemas");
        assert_eq!(
            from_files.all().count(),
            embedded.all().count(),
            "every file under tenant-schemas/ must be embedded in EMBEDDED"
        );
        assert!(from_files.all().count() >= 4);
        from_files.check_migrations().unwrap();
        for schema in from_files.all() {
            assert!(embedded.get(&schema.name, schema.version).is_ok());
        }
        for name in ["crm", "helpdesk"] {
            assert!(embedded.newest(name).unwrap().version >= 2);
        }
    }

    #[test]
    fn crm_v1_contacts_has_the_promised_fields() {
        let registry = Registry::embedded().unwrap();
        let crm = registry.get("crm", 1).unwrap();
        let contacts = crm.collection("contacts").unwrap();
        assert!(contacts.fields["name"].required);
        assert!(contacts.fields["email"].unique && contacts.fields["email"].is_indexed());
        assert!(contacts.fields.contains_key("phone") && contacts.fields.contains_key("notes"));
        assert!(crm.collection("companies").is_some() && crm.collection("deals").is_some());
        let helpdesk = registry.get("helpdesk", 1).unwrap();
        for c in ["customers", "tickets", "messages"] {
            assert!(helpdesk.collection(c).is_some(), "{c}");
        }
    }

    #[test]
    fn validation_table() {
        let registry = Registry::embedded().unwrap();
        let contacts = registry
            .get("crm", 1)
            .unwrap()
            .collection("contacts")
            .unwrap();
        let cases: Vec<(Value, Result<(), RecordError>)> = vec![
            (json!({"name": "Ada", "email": "a@x"}), Ok(())),
            (json!({"name": "Ada", "phone": null}), Ok(())),
            (json!([1, 2]), Err(RecordError::NotAnObject)),
            (
                json!({"email": "a@x"}),
                Err(RecordError::MissingField("name".into())),
            ),
            (
                json!({"name": null}),
                Err(RecordError::WrongType {
                    field: "name".into(),
                    expected: "a string",
                }),
            ),
            (
                json!({"name": 5}),
                Err(RecordError::WrongType {
                    field: "name".into(),
                    expected: "a string",
                }),
            ),
            (
                json!({"name": "Ada", "age": 3}),
                Err(RecordError::UnknownField("age".into())),
            ),
        ];
        for (record, expected) in cases {
            assert_eq!(contacts.validate(&record), expected, "{record}");
        }
    }

    #[test]
    fn rfc3339_table() {
        for good in [
            "2026-11-23T10:00:00Z",
            "2026-11-23t10:00:00.123+05:30",
            "1999-01-01T00:00:60-00:00",
        ] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "",
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00:00.Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:00:00+5:30",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
