//! The tables the front serves, with the exact CQL column types drivers type-check against, and
//! the cell codec (CQL v4 value encodings).

use cassandra_protocol::frame::message_result::{
    ColSpec, ColType, ColTypeOption, ColTypeOptionValue, TableSpec,
};
use uuid::Uuid;

/// A CQL column type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `text`
    Text,
    /// `uuid`
    Uuid,
    /// `timeuuid`
    Timeuuid,
    /// `bigint`
    Bigint,
    /// `int`
    Int,
    /// `tinyint`
    Tinyint,
    /// `boolean`
    Boolean,
    /// `timestamp` (ms since the epoch)
    Timestamp,
    /// `blob`
    Blob,
    /// `inet`
    Inet,
    /// `frozen<set<…>>` / `set<…>`
    Set(Box<Ty>),
    /// `list<…>`
    List(Box<Ty>),
    /// `map<…, …>`
    Map(Box<Ty>, Box<Ty>),
}

impl Ty {
    /// The protocol's type option.
    pub fn option(&self) -> ColTypeOption {
        let plain = |id| ColTypeOption { id, value: None };
        match self {
            Ty::Text => plain(ColType::Varchar),
            Ty::Uuid => plain(ColType::Uuid),
            Ty::Timeuuid => plain(ColType::Timeuuid),
            Ty::Bigint => plain(ColType::Bigint),
            Ty::Int => plain(ColType::Int),
            Ty::Tinyint => plain(ColType::Tinyint),
            Ty::Boolean => plain(ColType::Boolean),
            Ty::Timestamp => plain(ColType::Timestamp),
            Ty::Blob => plain(ColType::Blob),
            Ty::Inet => plain(ColType::Inet),
            Ty::Set(e) => ColTypeOption {
                id: ColType::Set,
                value: Some(ColTypeOptionValue::CSet(Box::new(e.option()))),
            },
            Ty::List(e) => ColTypeOption {
                id: ColType::List,
                value: Some(ColTypeOptionValue::CList(Box::new(e.option()))),
            },
            Ty::Map(k, v) => ColTypeOption {
                id: ColType::Map,
                value: Some(ColTypeOptionValue::CMap(
                    Box::new(k.option()),
                    Box::new(v.option()),
                )),
            },
        }
    }

    /// The type as `system_schema.columns.type` spells it.
    pub fn cql_name(&self) -> String {
        match self {
            Ty::Text => "text".into(),
            Ty::Uuid => "uuid".into(),
            Ty::Timeuuid => "timeuuid".into(),
            Ty::Bigint => "bigint".into(),
            Ty::Int => "int".into(),
            Ty::Tinyint => "tinyint".into(),
            Ty::Boolean => "boolean".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Blob => "blob".into(),
            Ty::Inet => "inet".into(),
            Ty::Set(e) => format!("frozen<set<{}>>", e.cql_name()),
            Ty::List(e) => format!("list<{}>", e.cql_name()),
            Ty::Map(k, v) => format!("map<{}, {}>", k.cql_name(), v.cql_name()),
        }
    }
}

/// A cell value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum V {
    /// NULL.
    Null,
    /// text
    Text(String),
    /// uuid / timeuuid
    Uuid(Uuid),
    /// bigint / timestamp (ms)
    Long(i64),
    /// int
    Int(i32),
    /// tinyint
    Tiny(i8),
    /// boolean
    Bool(bool),
    /// blob
    Blob(Vec<u8>),
    /// inet (IPv4)
    Inet([u8; 4]),
    /// set / list
    Coll(Vec<V>),
    /// map
    Map(Vec<(V, V)>),
}

fn push_item(out: &mut Vec<u8>, v: &V) {
    match v.encode() {
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_be_bytes());
            out.extend_from_slice(&b);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

impl V {
    /// The cell's bytes; `None` for NULL.
    pub fn encode(&self) -> Option<Vec<u8>> {
        Some(match self {
            V::Null => return None,
            V::Text(s) => s.as_bytes().to_vec(),
            V::Uuid(u) => u.as_bytes().to_vec(),
            V::Long(n) => n.to_be_bytes().to_vec(),
            V::Int(n) => n.to_be_bytes().to_vec(),
            V::Tiny(n) => n.to_be_bytes().to_vec(),
            V::Bool(b) => vec![u8::from(*b)],
            V::Blob(b) => b.clone(),
            V::Inet(a) => a.to_vec(),
            V::Coll(items) => {
                let mut out = (items.len() as i32).to_be_bytes().to_vec();
                for i in items {
                    push_item(&mut out, i);
                }
                out
            }
            V::Map(pairs) => {
                let mut out = (pairs.len() as i32).to_be_bytes().to_vec();
                for (k, v) in pairs {
                    push_item(&mut out, k);
                    push_item(&mut out, v);
                }
                out
            }
        })
    }

    /// Decodes a bound value of type `ty`; the error names what is wrong.
    pub fn decode(ty: &Ty, bytes: Option<&[u8]>) -> Result<V, String> {
        let Some(b) = bytes else { return Ok(V::Null) };
        let fixed = |n: usize| -> Result<&[u8], String> {
            if b.len() == n {
                Ok(b)
            } else {
                Err(format!(
                    "{} needs {n} bytes, got {}",
                    ty.cql_name(),
                    b.len()
                ))
            }
        };
        Ok(match ty {
            Ty::Text => {
                V::Text(String::from_utf8(b.to_vec()).map_err(|_| "text is not UTF-8".to_string())?)
            }
            Ty::Uuid | Ty::Timeuuid => {
                V::Uuid(Uuid::from_slice(fixed(16)?).map_err(|e| e.to_string())?)
            }
            Ty::Bigint | Ty::Timestamp => {
                V::Long(i64::from_be_bytes(fixed(8)?.try_into().expect("8")))
            }
            Ty::Int => V::Int(i32::from_be_bytes(fixed(4)?.try_into().expect("4"))),
            Ty::Tinyint => V::Tiny(i8::from_be_bytes(fixed(1)?.try_into().expect("1"))),
            Ty::Boolean => V::Bool(fixed(1)?[0] != 0),
            Ty::Blob => V::Blob(b.to_vec()),
            Ty::Inet => V::Inet(fixed(4)?.try_into().expect("4")),
            Ty::Set(e) | Ty::List(e) => {
                let mut items = Vec::new();
                let mut r = Reader(b);
                let n = r.int()?;
                for _ in 0..n {
                    items.push(V::decode(e, r.bytes()?)?);
                }
                V::Coll(items)
            }
            Ty::Map(k, v) => {
                let mut pairs = Vec::new();
                let mut r = Reader(b);
                let n = r.int()?;
                for _ in 0..n {
                    let key = V::decode(k, r.bytes()?)?;
                    pairs.push((key, V::decode(v, r.bytes()?)?));
                }
                V::Map(pairs)
            }
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn int(&mut self) -> Result<i32, String> {
        if self.0.len() < 4 {
            return Err("truncated collection".into());
        }
        let (h, t) = self.0.split_at(4);
        self.0 = t;
        Ok(i32::from_be_bytes(h.try_into().expect("4")))
    }

    fn bytes(&mut self) -> Result<Option<&'a [u8]>, String> {
        let n = self.int()?;
        if n < 0 {
            return Ok(None);
        }
        let n = n as usize;
        if self.0.len() < n {
            return Err("truncated collection element".into());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(Some(h))
    }
}

/// One served table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableDef {
    /// Keyspace.
    pub keyspace: &'static str,
    /// Name.
    pub name: String,
    /// Columns in `SELECT *` order: partition key, clustering key, then regular columns
    /// alphabetically (as Scylla orders them).
    pub columns: Vec<(String, Ty)>,
    /// How many leading columns form the partition key.
    pub partition_key: usize,
    /// How many columns after them form the clustering key.
    pub clustering_key: usize,
}

impl TableDef {
    fn new(keyspace: &'static str, name: &str, pk: usize, ck: usize, cols: &[(&str, Ty)]) -> Self {
        TableDef {
            keyspace,
            name: name.into(),
            columns: cols
                .iter()
                .map(|(n, t)| (n.to_string(), t.clone()))
                .collect(),
            partition_key: pk,
            clustering_key: ck,
        }
    }

    /// The type of `column`.
    pub fn column(&self, column: &str) -> Option<&Ty> {
        self.columns
            .iter()
            .find(|(n, _)| n == column)
            .map(|(_, t)| t)
    }

    /// Column specs for the named columns (or all).
    pub fn specs(&self, names: &[String]) -> Vec<ColSpec> {
        names
            .iter()
            .filter_map(|n| {
                self.column(n).map(|t| ColSpec {
                    table_spec: None,
                    name: n.clone(),
                    col_type: t.option(),
                })
            })
            .collect()
    }

    /// The table spec.
    pub fn spec(&self) -> TableSpec {
        TableSpec {
            ks_name: self.keyspace.into(),
            table_name: self.name.clone(),
        }
    }
}

fn set(t: Ty) -> Ty {
    Ty::Set(Box::new(t))
}

/// The outbox table's regular columns (the CDC log repeats them).
const OUTBOX_REGULAR: [(&str, Ty); 5] = [
    ("aggregate_type", Ty::Text),
    ("created_at", Ty::Timestamp),
    ("event_type", Ty::Text),
    ("id", Ty::Uuid),
    ("payload", Ty::Text),
];

/// Every table the front serves.
pub fn tables() -> Vec<TableDef> {
    use Ty::*;
    let text_list = || Ty::List(Box::new(Text));
    let mut log_cols: Vec<(String, Ty)> = vec![
        ("cdc$stream_id".into(), Blob),
        ("cdc$time".into(), Timeuuid),
        ("cdc$batch_seq_no".into(), Int),
    ];
    let mut regular: Vec<(String, Ty)> = vec![
        ("aggregate_id".into(), Uuid),
        ("seq".into(), Bigint),
        ("cdc$end_of_batch".into(), Boolean),
        ("cdc$operation".into(), Tinyint),
        ("cdc$ttl".into(), Bigint),
    ];
    for (c, t) in OUTBOX_REGULAR {
        regular.push((format!("cdc$deleted_{c}"), Boolean));
        regular.push((c.into(), t));
    }
    regular.sort_by(|a, b| a.0.cmp(&b.0));
    log_cols.extend(regular);
    let mut outbox = vec![("aggregate_id", Uuid), ("seq", Bigint)];
    outbox.extend(OUTBOX_REGULAR);
    vec![
        TableDef::new(
            "system",
            "local",
            1,
            0,
            &[
                ("key", Text),
                ("broadcast_address", Inet),
                ("cluster_name", Text),
                ("cql_version", Text),
                ("data_center", Text),
                ("host_id", Uuid),
                ("listen_address", Inet),
                ("native_protocol_version", Text),
                ("partitioner", Text),
                ("rack", Text),
                ("release_version", Text),
                ("rpc_address", Inet),
                ("schema_version", Uuid),
                ("tokens", set(Text)),
            ],
        ),
        TableDef::new(
            "system",
            "peers",
            1,
            0,
            &[
                ("peer", Inet),
                ("data_center", Text),
                ("host_id", Uuid),
                ("preferred_ip", Inet),
                ("rack", Text),
                ("release_version", Text),
                ("rpc_address", Inet),
                ("schema_version", Uuid),
                ("tokens", set(Text)),
            ],
        ),
        TableDef::new(
            "system_schema",
            "keyspaces",
            1,
            0,
            &[
                ("keyspace_name", Text),
                ("durable_writes", Boolean),
                ("replication", Map(Box::new(Text), Box::new(Text))),
            ],
        ),
        TableDef::new(
            "system_schema",
            "tables",
            1,
            1,
            &[("keyspace_name", Text), ("table_name", Text)],
        ),
        TableDef::new(
            "system_schema",
            "columns",
            1,
            2,
            &[
                ("keyspace_name", Text),
                ("table_name", Text),
                ("column_name", Text),
                ("clustering_order", Text),
                ("kind", Text),
                ("position", Int),
                ("type", Text),
            ],
        ),
        TableDef::new(
            "system_schema",
            "types",
            1,
            1,
            &[
                ("keyspace_name", Text),
                ("type_name", Text),
                ("field_names", text_list()),
                ("field_types", text_list()),
            ],
        ),
        TableDef::new(
            "system_schema",
            "views",
            1,
            1,
            &[
                ("keyspace_name", Text),
                ("view_name", Text),
                ("base_table_name", Text),
            ],
        ),
        TableDef::new(
            "system_schema",
            "scylla_tables",
            1,
            1,
            &[
                ("keyspace_name", Text),
                ("table_name", Text),
                ("partitioner", Text),
            ],
        ),
        TableDef::new(
            "system_schema",
            "scylla_keyspaces",
            1,
            0,
            &[("keyspace_name", Text), ("initial_tablets", Int)],
        ),
        TableDef::new(
            "system_distributed",
            "cdc_generation_timestamps",
            1,
            1,
            &[("key", Text), ("time", Timestamp), ("expired", Timestamp)],
        ),
        TableDef::new(
            "system_distributed",
            "cdc_streams_descriptions_v2",
            1,
            1,
            &[
                ("time", Timestamp),
                ("range_end", Bigint),
                ("streams", set(Blob)),
            ],
        ),
        TableDef::new(
            "orders_ks",
            "orders",
            1,
            0,
            &[("id", Uuid), ("last_seq", Bigint), ("status", Text)],
        ),
        TableDef::new("orders_ks", "outbox_messages", 1, 1, &outbox),
        TableDef {
            keyspace: "orders_ks",
            name: "outbox_messages_scylla_cdc_log".into(),
            columns: log_cols,
            partition_key: 1,
            clustering_key: 2,
        },
        TableDef::new(
            "orders_ks",
            "poll_cursor",
            1,
            0,
            &[("relay", Text), ("created_at_us", Bigint), ("id", Uuid)],
        ),
        TableDef::new(
            "orders_ks",
            "cdc_checkpoints",
            1,
            0,
            &[
                ("stream_id", Blob),
                ("generation", Timestamp),
                ("time", Timestamp),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_trip_through_the_codec() {
        let ty = Ty::Set(Box::new(Ty::Blob));
        let v = V::Coll(vec![V::Blob(vec![1, 2]), V::Blob(vec![])]);
        assert_eq!(V::decode(&ty, v.encode().as_deref()).unwrap(), v);
        let ty = Ty::Map(Box::new(Ty::Text), Box::new(Ty::Text));
        let v = V::Map(vec![(V::Text("class".into()), V::Text("x".into()))]);
        assert_eq!(V::decode(&ty, v.encode().as_deref()).unwrap(), v);
        assert_eq!(V::decode(&Ty::Bigint, None).unwrap(), V::Null);
        assert!(
            V::decode(&Ty::Bigint, Some(&[1, 2]))
                .unwrap_err()
                .contains("8 bytes")
        );
    }

    #[test]
    fn the_log_table_lists_keys_first_then_regular_columns_alphabetically() {
        let log = tables()
            .into_iter()
            .find(|t| t.name == "outbox_messages_scylla_cdc_log")
            .unwrap();
        let names: Vec<&str> = log.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[..3],
            ["cdc$stream_id", "cdc$time", "cdc$batch_seq_no"]
        );
        let mut rest = names[3..].to_vec();
        rest.sort();
        assert_eq!(rest, names[3..]);
        assert_eq!(log.column("cdc$time"), Some(&Ty::Timeuuid));
        assert_eq!(log.column("cdc$operation"), Some(&Ty::Tinyint));
    }
}
