//! Executes recognised statements against the simulated cluster.
//!
//! Reads of the CDC log, the outbox scan, the generation tables and the checkpoint table go
//! through the same [`SimStore`]/[`SimCheckpoints`] ports the simulated relays use (so they cost
//! the same simulated latency and are counted the same way); the system tables are built from
//! the cluster's topology.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use uuid::Uuid;

use super::catalog::{TableDef, Ty, V, tables};
use super::cql::{Cond, Op, Projection, Statement, Term};
use crate::cdc::{CdcTime, PageState, StreamId};
use crate::live::WallClock;
use crate::model::{AggregateId, Cursor, EventId, EventType, OrderStatus, OutboxEvent, Timestamp};
use crate::ports::{
    CheckpointStore, Clock, OrderBatch, OutboxStore, ScanFrom, StoreError, WriteTimestamp,
};
use crate::sim::scylla::{SimCheckpoints, SimCluster, SimStore};

/// A CQL error to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CqlError {
    /// 0x2200 Invalid: the statement cannot run here.
    Invalid(String),
    /// 0x2000 Syntax.
    Syntax(String),
    /// 0x1000 Unavailable.
    Unavailable,
    /// 0x1200 ReadTimeout.
    ReadTimeout,
    /// 0x1100 WriteTimeout.
    WriteTimeout,
    /// 0x000A Protocol.
    Protocol(String),
    /// 0x2500 Unprepared, with the unknown id.
    Unprepared(Vec<u8>),
}

impl CqlError {
    fn from_store(e: StoreError, write: bool) -> Self {
        match e {
            StoreError::Timeout if write => CqlError::WriteTimeout,
            StoreError::Timeout => CqlError::ReadTimeout,
            StoreError::Unavailable => CqlError::Unavailable,
            StoreError::Rejected(why) => CqlError::Invalid(why),
        }
    }

    /// The ERROR body (code, message, extra fields).
    pub fn body(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        let quorum = 4u16.to_be_bytes();
        let (code, msg): (i32, String) = match self {
            CqlError::Invalid(m) => (0x2200, m.clone()),
            CqlError::Syntax(m) => (0x2000, m.clone()),
            CqlError::Unavailable => (0x1000, "simulated cluster unavailable".into()),
            CqlError::ReadTimeout => (0x1200, "simulated read timeout".into()),
            CqlError::WriteTimeout => (0x1100, "simulated write timeout".into()),
            CqlError::Protocol(m) => (0x000A, m.clone()),
            CqlError::Unprepared(_) => (0x2500, "unknown prepared statement id".into()),
        };
        let mut out = code.to_be_bytes().to_vec();
        string(&mut out, &msg);
        match self {
            CqlError::Unavailable => {
                out.extend_from_slice(&quorum);
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&0i32.to_be_bytes());
            }
            CqlError::ReadTimeout => {
                out.extend_from_slice(&quorum);
                out.extend_from_slice(&0i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                out.push(0);
            }
            CqlError::WriteTimeout => {
                out.extend_from_slice(&quorum);
                out.extend_from_slice(&0i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                string(&mut out, "BATCH");
            }
            CqlError::Unprepared(id) => {
                out.extend_from_slice(&(id.len() as u16).to_be_bytes());
                out.extend_from_slice(id);
            }
            _ => {}
        }
        out
    }
}

/// A result to send back.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// RESULT Void.
    Void,
    /// RESULT Rows.
    Rows {
        /// The table the columns come from.
        table: TableDef,
        /// Column names and types.
        columns: Vec<(String, Ty)>,
        /// Rows, cells in column order.
        rows: Vec<Vec<V>>,
        /// Paging state when more rows follow.
        paging: Option<Vec<u8>>,
    },
}

/// A statement with its bind values decoded.
#[derive(Clone, Debug)]
pub struct Bound<'a> {
    /// The statement.
    pub stmt: &'a Statement,
    /// Values by bind index.
    pub values: Vec<V>,
}

impl Bound<'_> {
    fn eval(&self, t: &Term) -> V {
        match t {
            Term::Bind(i) => self.values.get(*i).cloned().unwrap_or(V::Null),
            Term::Str(s) => V::Text(s.clone()),
            Term::Num(n) => V::Long(*n),
            Term::Blob(b) => V::Blob(b.clone()),
            Term::MinTimeuuid(inner) => self.eval(inner),
            Term::Now => V::Long(WallClock.now().as_millis()),
            Term::Opaque => V::Null,
        }
    }

    fn cond(&self, conds: &[Cond], column: &str, op: Op) -> Option<V> {
        conds
            .iter()
            .find(|c| c.column == column && c.op == op)
            .map(|c| self.eval(&c.term))
    }
}

/// Finds the table a statement names (unqualified names use `keyspace`).
pub fn table(keyspace: &str, ks: &str, name: &str) -> Result<TableDef, CqlError> {
    let ks = if ks.is_empty() { keyspace } else { ks };
    tables()
        .into_iter()
        .find(|t| t.keyspace == ks && t.name == name)
        .ok_or_else(|| CqlError::Invalid(format!("unconfigured table {ks}.{name}")))
}

/// The types of a statement's bind markers, by index (what PREPARED must announce).
pub fn bind_types(
    stmt: &Statement,
    keyspace: &str,
    count: usize,
) -> Result<Vec<(String, Ty)>, CqlError> {
    let mut out: BTreeMap<usize, (String, Ty)> = BTreeMap::new();
    let mut visit = |t: &TableDef, col: &str, op: Op, term: &Term| -> Result<(), CqlError> {
        let ty = t
            .column(col)
            .ok_or_else(|| CqlError::Invalid(format!("undefined column {col} in {}", t.name)))?
            .clone();
        match term {
            Term::Bind(i) => {
                let ty = if op == Op::In {
                    Ty::List(Box::new(ty))
                } else {
                    ty
                };
                out.insert(*i, (col.to_string(), ty));
            }
            Term::MinTimeuuid(inner) => {
                if let Term::Bind(i) = **inner {
                    out.insert(i, (format!("mintimeuuid({col})"), Ty::Timestamp));
                }
            }
            _ => {}
        }
        Ok(())
    };
    match stmt {
        Statement::Select {
            keyspace: ks,
            table: name,
            conds,
            ..
        } => {
            let t = table(keyspace, ks, name)?;
            for c in conds {
                visit(&t, &c.column, c.op, &c.term)?;
            }
        }
        Statement::Insert {
            keyspace: ks,
            table: name,
            values,
        } => {
            let t = table(keyspace, ks, name)?;
            for (c, term) in values {
                visit(&t, c, Op::Eq, term)?;
            }
        }
        Statement::Update {
            keyspace: ks,
            table: name,
            sets,
            conds,
        } => {
            let t = table(keyspace, ks, name)?;
            for (c, term) in sets {
                visit(&t, c, Op::Eq, term)?;
            }
            for c in conds {
                visit(&t, &c.column, c.op, &c.term)?;
            }
        }
        Statement::Create | Statement::Use(_) => {}
    }
    // Markers outside WHERE/SET/VALUES (USING TTL ?, USING TIMESTAMP ?) are bigints.
    Ok((0..count)
        .map(|i| out.remove(&i).unwrap_or((format!("[{i}]"), Ty::Bigint)))
        .collect())
}

/// Column names and types, in result order.
pub type Columns = Vec<(String, Ty)>;

/// The result columns of a statement.
pub fn result_columns(
    stmt: &Statement,
    keyspace: &str,
) -> Result<Option<(TableDef, Columns)>, CqlError> {
    let Statement::Select {
        keyspace: ks,
        table: name,
        projection,
        ..
    } = stmt
    else {
        return Ok(None);
    };
    let t = table(keyspace, ks, name)?;
    let cols = match projection {
        Projection::All => t.columns.clone(),
        Projection::Count => vec![("count".into(), Ty::Bigint)],
        Projection::Columns(names) => names
            .iter()
            .map(|n| {
                t.column(n)
                    .map(|ty| (n.clone(), ty.clone()))
                    .ok_or_else(|| {
                        CqlError::Invalid(format!("undefined column name {n} in table {}", t.name))
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Some((t, cols)))
}

/// The simulated cluster behind the front.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The cluster.
    pub cluster: SimCluster,
    /// The writer's session (writes are counted under the writer).
    pub writer: SimStore,
    /// The readers' session.
    pub reader: SimStore,
    /// The checkpoint table.
    pub checkpoints: SimCheckpoints,
    /// Nodes with a listener: (node id, address).
    pub listeners: Vec<(u32, Ipv4Addr)>,
    /// Cap on rows per page (to exercise paging), if any.
    pub max_page_rows: Option<usize>,
}

const SCHEMA_VERSION: Uuid = Uuid::from_u128(0x5c4e_0000_0000_4000_8000_0000_0000_0001);

fn host_id(node: u32) -> Uuid {
    Uuid::from_u128(0x00dd_ba11_0000_4000_8000_0000_0000_0000 | u128::from(node))
}

fn encode_page(p: &PageState) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(&(p.stream_index as u64).to_be_bytes());
    out.extend_from_slice(&p.after.0.micros.to_be_bytes());
    out.extend_from_slice(&p.after.0.lsb.to_be_bytes());
    out.extend_from_slice(&p.after.1.to_be_bytes());
    out
}

fn decode_page(b: &[u8]) -> Result<PageState, CqlError> {
    if b.len() != 28 {
        return Err(CqlError::Protocol(format!(
            "paging state of {} bytes, expected 28",
            b.len()
        )));
    }
    let u = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().expect("8"));
    Ok(PageState {
        stream_index: usize::try_from(u(0..8))
            .map_err(|_| CqlError::Protocol("bad paging state".into()))?,
        after: (
            CdcTime {
                micros: u(8..16) as i64,
                lsb: u(16..24),
            },
            i32::from_be_bytes(b[24..28].try_into().expect("4")),
        ),
    })
}

fn long(v: &V, what: &str) -> Result<i64, CqlError> {
    match v {
        V::Long(n) => Ok(*n),
        V::Int(n) => Ok(i64::from(*n)),
        other => Err(CqlError::Invalid(format!(
            "{what}: expected a number, got {other:?}"
        ))),
    }
}

fn uuid(v: &V, what: &str) -> Result<Uuid, CqlError> {
    match v {
        V::Uuid(u) => Ok(*u),
        V::Text(s) => Uuid::parse_str(s).map_err(|e| CqlError::Invalid(format!("{what}: {e}"))),
        other => Err(CqlError::Invalid(format!(
            "{what}: expected a uuid, got {other:?}"
        ))),
    }
}

fn text(v: &V, what: &str) -> Result<String, CqlError> {
    match v {
        V::Text(s) => Ok(s.clone()),
        other => Err(CqlError::Invalid(format!(
            "{what}: expected text, got {other:?}"
        ))),
    }
}

fn stream_id(v: &V) -> Result<Vec<u8>, CqlError> {
    match v {
        V::Blob(b) => Ok(b.clone()),
        other => Err(CqlError::Invalid(format!(
            "stream_id: expected a blob, got {other:?}"
        ))),
    }
}

fn status(s: &str) -> Option<OrderStatus> {
    Some(match s {
        "Created" => OrderStatus::Created,
        "Paid" => OrderStatus::Paid,
        "Shipped" => OrderStatus::Shipped,
        "Cancelled" => OrderStatus::Cancelled,
        _ => return None,
    })
}

/// One INSERT's columns, evaluated.
pub type Row = BTreeMap<String, V>;

impl Backend {
    fn node_row(&self, t: &TableDef, node: u32, addr: Ipv4Addr) -> Vec<V> {
        let state = self.cluster.state();
        let tokens: Vec<V> = state
            .topology
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.tokens.iter().map(|t| V::Text(t.to_string())).collect())
            .unwrap_or_default();
        t.columns
            .iter()
            .map(|(c, _)| match c.as_str() {
                "key" => V::Text("local".into()),
                "peer" | "broadcast_address" | "listen_address" | "rpc_address"
                | "preferred_ip" => V::Inet(addr.octets()),
                "cluster_name" => V::Text("outbox-sim".into()),
                "cql_version" => V::Text("3.3.1".into()),
                "data_center" => V::Text("datacenter1".into()),
                "rack" => V::Text("rack1".into()),
                "host_id" => V::Uuid(host_id(node)),
                "native_protocol_version" => V::Text("4".into()),
                "partitioner" => V::Text("org.apache.cassandra.dht.Murmur3Partitioner".into()),
                "release_version" => V::Text("3.0.8".into()),
                "schema_version" => V::Uuid(SCHEMA_VERSION),
                "tokens" => V::Coll(tokens.clone()),
                _ => V::Null,
            })
            .collect()
    }

    /// Listeners whose node is still in the ring.
    fn live_listeners(&self) -> Vec<(u32, Ipv4Addr)> {
        let state = self.cluster.state();
        self.listeners
            .iter()
            .filter(|(id, _)| state.topology.nodes.iter().any(|n| n.id == *id))
            .copied()
            .collect()
    }

    fn schema_rows(&self, t: &TableDef) -> Vec<Vec<V>> {
        let ours: Vec<TableDef> = tables()
            .into_iter()
            .filter(|d| d.keyspace == "orders_ks")
            .collect();
        let cell = |c: &str, ks: &str, table: &str| match c {
            "keyspace_name" => V::Text(ks.into()),
            "table_name" => V::Text(table.into()),
            _ => V::Null,
        };
        match t.name.as_str() {
            "keyspaces" => vec![vec![
                V::Text("orders_ks".into()),
                V::Bool(true),
                V::Map(vec![
                    (
                        V::Text("class".into()),
                        V::Text("org.apache.cassandra.locator.SimpleStrategy".into()),
                    ),
                    (V::Text("replication_factor".into()), V::Text("1".into())),
                ]),
            ]],
            "tables" | "scylla_tables" => ours
                .iter()
                .map(|d| {
                    t.columns
                        .iter()
                        .map(|(c, _)| cell(c, d.keyspace, &d.name))
                        .collect()
                })
                .collect(),
            "columns" => {
                let mut rows = Vec::new();
                for d in &ours {
                    for (i, (name, ty)) in d.columns.iter().enumerate() {
                        let (kind, position) = if i < d.partition_key {
                            ("partition_key", i as i32)
                        } else if i < d.partition_key + d.clustering_key {
                            ("clustering", (i - d.partition_key) as i32)
                        } else {
                            ("regular", -1)
                        };
                        rows.push(
                            t.columns
                                .iter()
                                .map(|(c, _)| match c.as_str() {
                                    "column_name" => V::Text(name.clone()),
                                    "clustering_order" => V::Text(
                                        if kind == "clustering" { "asc" } else { "none" }.into(),
                                    ),
                                    "kind" => V::Text(kind.into()),
                                    "position" => V::Int(position),
                                    "type" => V::Text(ty.cql_name()),
                                    other => cell(other, d.keyspace, &d.name),
                                })
                                .collect(),
                        );
                    }
                }
                rows
            }
            _ => Vec::new(),
        }
    }

    /// Runs a SELECT. `node`/`addr` is the node the connection is on.
    pub async fn select(
        &self,
        b: &Bound<'_>,
        keyspace: &str,
        page_size: Option<usize>,
        paging: Option<&[u8]>,
        node: (u32, Ipv4Addr),
    ) -> Result<Outcome, CqlError> {
        let Statement::Select {
            keyspace: ks,
            table: name,
            conds,
            descending,
            limit,
            projection,
        } = b.stmt
        else {
            return Err(CqlError::Invalid("not a SELECT".into()));
        };
        let (t, columns) = result_columns(b.stmt, keyspace)?.expect("a select");
        let page_size = page_size
            .filter(|p| *p > 0)
            .unwrap_or(5_000)
            .min(self.max_page_rows.unwrap_or(usize::MAX))
            .max(1);
        let mut next_page = None;
        let full: Vec<Vec<V>> = match (t.keyspace, t.name.as_str()) {
            ("system", "local") => vec![self.node_row(&t, node.0, node.1)],
            ("system", "peers") if *projection == Projection::Count => {
                let n = self
                    .reader
                    .peer_count()
                    .await
                    .map_err(|e| CqlError::from_store(e, false))?;
                return Ok(Outcome::Rows {
                    table: t,
                    columns,
                    rows: vec![vec![V::Long(n as i64)]],
                    paging: None,
                });
            }
            ("system", "peers") => self
                .live_listeners()
                .into_iter()
                .filter(|(id, _)| *id != node.0)
                .map(|(id, a)| self.node_row(&t, id, a))
                .collect(),
            ("system_schema", _) => self.schema_rows(&t),
            ("system_distributed", "cdc_generation_timestamps") => {
                self.generation_rows(&t, b, conds, *descending).await?
            }
            ("system_distributed", "cdc_streams_descriptions_v2") => {
                let g = b.cond(conds, "time", Op::Eq).ok_or_else(|| {
                    CqlError::Invalid("cdc_streams_descriptions_v2 needs time = ?".into())
                })?;
                let g = long(&g, "time")?;
                let start = self.generation_start_ms(g);
                let groups = match start {
                    Some(s) => self
                        .reader
                        .stream_groups(s)
                        .await
                        .map_err(|e| CqlError::from_store(e, false))?,
                    None => Vec::new(),
                };
                groups
                    .into_iter()
                    .map(|gr| {
                        vec![
                            V::Long(g),
                            V::Long(gr.range_end),
                            V::Coll(gr.streams.iter().map(|s| V::Blob(s.0.to_vec())).collect()),
                        ]
                    })
                    .collect()
            }
            ("orders_ks", "outbox_messages_scylla_cdc_log") => {
                let (rows, next) = self.log_rows(b, conds, page_size, paging).await?;
                next_page = next;
                rows
            }
            ("orders_ks", "outbox_messages") => {
                let lo = b.cond(conds, "created_at", Op::Ge);
                let hi = b.cond(conds, "created_at", Op::Lt);
                let (Some(lo), Some(hi)) = (lo, hi) else {
                    return Err(CqlError::Invalid(
                        "outbox_messages reads need created_at >= ? AND created_at < ?".into(),
                    ));
                };
                let lo = Timestamp::from_millis(long(&lo, "created_at")?);
                let hi = Timestamp::from_millis(long(&hi, "created_at")?);
                let events = self
                    .reader
                    .scan_outbox(ScanFrom::AtOrAfter(lo), hi, page_size)
                    .await
                    .map_err(|e| CqlError::from_store(e, false))?;
                events.iter().map(|e| outbox_cells(&t, e, None)).collect()
            }
            ("orders_ks", "poll_cursor") => {
                let c = self
                    .checkpoints
                    .load_cursor()
                    .await
                    .map_err(|e| CqlError::from_store(e, false))?;
                c.map(|c| {
                    vec![
                        V::Text("outbox".into()),
                        V::Long(c.created_at.as_micros()),
                        V::Uuid(c.id.0),
                    ]
                })
                .into_iter()
                .collect()
            }
            ("orders_ks", "cdc_checkpoints") => {
                let s = b.cond(conds, "stream_id", Op::Eq).ok_or_else(|| {
                    CqlError::Invalid("cdc_checkpoints reads need stream_id = ?".into())
                })?;
                let s = stream_id(&s)?;
                if s == [0] {
                    let g = self
                        .checkpoints
                        .load_generation()
                        .await
                        .map_err(|e| CqlError::from_store(e, false))?;
                    g.map(|g| vec![V::Blob(s), V::Long(g.as_millis()), V::Long(i64::MAX)])
                        .into_iter()
                        .collect()
                } else {
                    let id = StreamId(s.as_slice().try_into().map_err(|_| {
                        CqlError::Invalid(format!("stream_id of {} bytes, expected 16", s.len()))
                    })?);
                    let t = self
                        .checkpoints
                        .load_stream(id)
                        .await
                        .map_err(|e| CqlError::from_store(e, false))?;
                    t.map(|t| vec![V::Blob(s), V::Null, V::Long(t.as_millis())])
                        .into_iter()
                        .collect()
                }
            }
            ("orders_ks", "orders") => {
                return Err(CqlError::Invalid(
                    "orders_ks.orders is write-only in the front".into(),
                ));
            }
            (ks, name) => return Err(CqlError::Invalid(format!("unconfigured table {ks}.{name}"))),
        };
        let _ = ks;
        let _ = name;
        // Equality filters on literal or bound text columns (system tables' WHERE clauses).
        let mut rows: Vec<Vec<V>> = full
            .into_iter()
            .filter(|row| {
                conds.iter().filter(|c| c.op == Op::Eq).all(|c| {
                    let Some(i) = t.columns.iter().position(|(n, _)| *n == c.column) else {
                        return true;
                    };
                    match (&row[i], b.eval(&c.term)) {
                        (V::Text(a), V::Text(v)) => *a == v,
                        _ => true,
                    }
                })
            })
            .collect();
        if *projection == Projection::Count {
            return Ok(Outcome::Rows {
                table: t,
                columns,
                rows: vec![vec![V::Long(rows.len() as i64)]],
                paging: None,
            });
        }
        if let Some(l) = limit {
            rows.truncate(*l);
        }
        let idx: Vec<usize> = columns
            .iter()
            .map(|(n, _)| t.columns.iter().position(|(m, _)| m == n).expect("checked"))
            .collect();
        let rows = rows
            .into_iter()
            .map(|r| idx.iter().map(|&i| r[i].clone()).collect())
            .collect();
        Ok(Outcome::Rows {
            table: t,
            columns,
            rows,
            paging: next_page,
        })
    }

    /// The µs start of the generation whose ms timestamp is `ms`.
    fn generation_start_ms(&self, ms: i64) -> Option<Timestamp> {
        let now = WallClock.now();
        self.cluster
            .state()
            .topology
            .generations
            .iter()
            .find(|g| g.announced_at <= now && g.start.as_millis() == ms)
            .map(|g| g.start)
    }

    async fn generation_rows(
        &self,
        t: &TableDef,
        b: &Bound<'_>,
        conds: &[Cond],
        descending: bool,
    ) -> Result<Vec<Vec<V>>, CqlError> {
        // Listing generations costs one metadata read, like the simulated fetcher's queries.
        self.reader
            .first_generation()
            .await
            .map_err(|e| CqlError::from_store(e, false))?;
        let now = WallClock.now();
        let le = b
            .cond(conds, "time", Op::Le)
            .map(|v| long(&v, "time"))
            .transpose()?;
        let gt = b
            .cond(conds, "time", Op::Gt)
            .map(|v| long(&v, "time"))
            .transpose()?;
        let mut times: Vec<i64> = self
            .cluster
            .state()
            .topology
            .generations
            .iter()
            .filter(|g| g.announced_at <= now)
            .map(|g| g.start.as_millis())
            .filter(|ms| le.is_none_or(|le| *ms <= le) && gt.is_none_or(|gt| *ms > gt))
            .collect();
        // The clustering order is DESC; `ORDER BY time ASC` reverses it.
        let explicit_asc = !descending && conds.iter().any(|c| c.op == Op::Gt);
        times.sort_unstable();
        if !explicit_asc {
            times.reverse();
        }
        Ok(times
            .into_iter()
            .map(|ms| {
                t.columns
                    .iter()
                    .map(|(c, _)| match c.as_str() {
                        "key" => V::Text("timestamps".into()),
                        "time" => V::Long(ms),
                        _ => V::Null,
                    })
                    .collect()
            })
            .collect())
    }

    async fn log_rows(
        &self,
        b: &Bound<'_>,
        conds: &[Cond],
        page_size: usize,
        paging: Option<&[u8]>,
    ) -> Result<(Vec<Vec<V>>, Option<Vec<u8>>), CqlError> {
        let streams = match b.cond(conds, "cdc$stream_id", Op::In) {
            Some(V::Coll(items)) => items
                .iter()
                .map(|v| {
                    stream_id(v).and_then(|s| {
                        s.as_slice().try_into().map(StreamId).map_err(|_| {
                            CqlError::Invalid(format!(
                                "stream id of {} bytes, expected 16",
                                s.len()
                            ))
                        })
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(V::Blob(s)) => {
                vec![StreamId(s.as_slice().try_into().map_err(|_| {
                    CqlError::Invalid("stream id is not 16 bytes".into())
                })?)]
            }
            _ => {
                return Err(CqlError::Invalid(
                    "CDC log reads need \"cdc$stream_id\" IN ?".into(),
                ));
            }
        };
        let bound = |op| -> Result<Timestamp, CqlError> {
            let v = b.cond(conds, "cdc$time", op).ok_or_else(|| {
                CqlError::Invalid(
                    "CDC log reads need \"cdc$time\" >= minTimeuuid(?) AND < minTimeuuid(?)".into(),
                )
            })?;
            Ok(Timestamp::from_millis(long(&v, "cdc$time")?))
        };
        let (from, to) = (bound(Op::Ge)?, bound(Op::Lt)?);
        let page = paging.map(decode_page).transpose()?;
        let p = self
            .reader
            .read_log(&streams, from, to, page, page_size)
            .await
            .map_err(|e| CqlError::from_store(e, false))?;
        let t = table("", "orders_ks", "outbox_messages_scylla_cdc_log")?;
        let rows = p
            .rows
            .iter()
            .map(|r| {
                t.columns
                    .iter()
                    .map(|(c, _)| match c.as_str() {
                        "cdc$stream_id" => V::Blob(r.stream_id.0.to_vec()),
                        "cdc$time" => V::Uuid(r.time.to_uuid()),
                        "cdc$batch_seq_no" => V::Int(r.batch_seq_no),
                        "cdc$end_of_batch" => V::Bool(r.end_of_batch),
                        "cdc$operation" => V::Tiny(r.operation.code()),
                        "cdc$ttl" => r.ttl.map_or(V::Null, V::Long),
                        c if c.starts_with("cdc$deleted_") => V::Null,
                        other => outbox_cell(other, &r.event),
                    })
                    .collect()
            })
            .collect();
        Ok((rows, p.next.as_ref().map(encode_page)))
    }

    /// Applies INSERT/UPDATE statements (one, or a BATCH's) with write timestamp `ts` (µs).
    pub async fn write(
        &self,
        rows: Vec<(String, Row)>,
        ts: Option<i64>,
    ) -> Result<Outcome, CqlError> {
        let mut order: Option<&Row> = None;
        let mut outbox: Option<&Row> = None;
        for (table, row) in &rows {
            match table.as_str() {
                "orders" => order = Some(row),
                "outbox_messages" => outbox = Some(row),
                "poll_cursor" => {
                    let c = Cursor {
                        created_at: Timestamp(long(
                            row.get("created_at_us").unwrap_or(&V::Null),
                            "created_at_us",
                        )?),
                        id: EventId(uuid(row.get("id").unwrap_or(&V::Null), "id")?),
                    };
                    self.checkpoints
                        .save_cursor(c)
                        .await
                        .map_err(|e| CqlError::from_store(e, true))?;
                }
                "cdc_checkpoints" => {
                    let s = stream_id(row.get("stream_id").unwrap_or(&V::Null))?;
                    if s == [0] {
                        let g = long(row.get("generation").unwrap_or(&V::Null), "generation")?;
                        self.checkpoints
                            .save_generation(Timestamp::from_millis(g))
                            .await
                            .map_err(|e| CqlError::from_store(e, true))?;
                    } else {
                        let id = StreamId(s.as_slice().try_into().map_err(|_| {
                            CqlError::Invalid(format!(
                                "stream_id of {} bytes, expected 16",
                                s.len()
                            ))
                        })?);
                        let t = long(row.get("time").unwrap_or(&V::Null), "time")?;
                        self.checkpoints
                            .save_stream(id, Timestamp::from_millis(t))
                            .await
                            .map_err(|e| CqlError::from_store(e, true))?;
                    }
                }
                other => {
                    return Err(CqlError::Invalid(format!(
                        "writes to {other} are not served"
                    )));
                }
            }
        }
        let Some(o) = outbox else {
            // An order row alone: the simulated cluster stores orders only with their event.
            return if order.is_some() {
                Err(CqlError::Invalid(
                    "orders_ks.orders is written only in a batch with its outbox row".into(),
                ))
            } else {
                Ok(Outcome::Void)
            };
        };
        let get = |c: &str| o.get(c).cloned().unwrap_or(V::Null);
        let event_type = text(&get("event_type"), "event_type")?;
        let event_type = EventType::parse(&event_type).ok_or_else(|| {
            CqlError::Invalid(format!("event_type {event_type:?} is not an order event"))
        })?;
        let event = OutboxEvent {
            id: EventId(uuid(&get("id"), "id")?),
            aggregate_type: text(&get("aggregate_type"), "aggregate_type")?.into(),
            aggregate_id: AggregateId(uuid(&get("aggregate_id"), "aggregate_id")?),
            seq: u64::try_from(long(&get("seq"), "seq")?)
                .map_err(|_| CqlError::Invalid("seq < 0".into()))?,
            event_type,
            payload: text(&get("payload"), "payload")?.into(),
            created_at: Timestamp(0),
        };
        let status = match order.and_then(|r| r.get("status")) {
            Some(V::Text(s)) => status(s)
                .ok_or_else(|| CqlError::Invalid(format!("status {s:?} is not an order status")))?,
            _ => event_type.status(),
        };
        self.writer
            .write(OrderBatch {
                status,
                event,
                timestamp: ts.map_or(WriteTimestamp::Coordinator, |t| {
                    WriteTimestamp::Client(Timestamp(t))
                }),
            })
            .await
            .map_err(|e| CqlError::from_store(e, true))?;
        Ok(Outcome::Void)
    }

    /// Evaluates an INSERT or UPDATE into (table, column values).
    pub fn write_row(b: &Bound<'_>) -> Result<(String, Row), CqlError> {
        match b.stmt {
            Statement::Insert { table, values, .. } => Ok((
                table.clone(),
                values.iter().map(|(c, t)| (c.clone(), b.eval(t))).collect(),
            )),
            Statement::Update {
                table, sets, conds, ..
            } => {
                let mut row: Row = sets.iter().map(|(c, t)| (c.clone(), b.eval(t))).collect();
                for c in conds.iter().filter(|c| c.op == Op::Eq) {
                    row.insert(c.column.clone(), b.eval(&c.term));
                }
                Ok((table.clone(), row))
            }
            _ => Err(CqlError::Invalid("not a write".into())),
        }
    }
}

fn outbox_cell(column: &str, e: &OutboxEvent) -> V {
    match column {
        "aggregate_id" => V::Uuid(e.aggregate_id.0),
        "seq" => V::Long(e.seq as i64),
        "aggregate_type" => V::Text(e.aggregate_type.to_string()),
        "created_at" => V::Long(e.created_at.as_millis()),
        "event_type" => V::Text(e.event_type.as_str().into()),
        "id" => V::Uuid(e.id.0),
        "payload" => V::Text(e.payload.to_string()),
        _ => V::Null,
    }
}

fn outbox_cells(t: &TableDef, e: &OutboxEvent, _unused: Option<()>) -> Vec<V> {
    t.columns.iter().map(|(c, _)| outbox_cell(c, e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_state_round_trips() {
        let p = PageState {
            stream_index: 3,
            after: (
                CdcTime {
                    micros: 1_767_225_600_123_456,
                    lsb: 0x1234_5678_9abc_def0,
                },
                -2,
            ),
        };
        assert_eq!(decode_page(&encode_page(&p)).unwrap(), p);
        assert!(matches!(decode_page(&[1, 2]), Err(CqlError::Protocol(_))));
    }
}
