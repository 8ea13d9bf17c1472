//! The CQL front: the simulated cluster served over the CQL native protocol v4 on loopback, so
//! the unmodified `scylla` driver, scylla-cdc and [`live::scylla`](crate::live::scylla) run
//! against it.
//!
//! One listener per simulated node (127.0.0.1, 127.0.0.2, … on one port). The cluster runs on
//! the wall clock inside the front's own thread (its state is single-threaded); connections are
//! smol tasks on that thread. Requests are decoded with `cassandra-protocol`, statements
//! recognised by [`cql`], executed by [`exec`] against the cluster's ports, and answered with
//! full result metadata. Unknown prepared ids get UNPREPARED, unsupported statements an Invalid
//! error naming them, malformed frames and unknown opcodes a Protocol error; a connection is
//! closed only when its framing is lost (a length beyond [`MAX_FRAME`]).
//!
//! See `../shared/reference/cql_front.md` for the protocol facts this follows (SUPPORTED without
//! Scylla extensions, bind metadata with exactly one column per marker, timeuuid vs uuid, …).

pub mod catalog;
pub mod cql;
pub mod exec;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cassandra_protocol::frame::message_request::RequestBody;
use cassandra_protocol::frame::message_result::{
    BodyResResultPrepared, BodyResResultRows, ColSpec, PreparedMetadata, ResResultBody,
    RowsMetadata, RowsMetadataFlags,
};
use cassandra_protocol::frame::message_supported::BodyResSupported;
use cassandra_protocol::frame::{Opcode, Serialize, Version};
use cassandra_protocol::query::QueryValues;
use cassandra_protocol::types::{CBytes, CBytesShort, value::Value};
use smol::io::{AsyncReadExt, AsyncWriteExt};

use crate::history::History;
use crate::live::WallClock;
use crate::ports::Clock;
use crate::seed::Seed;
use crate::sim::scylla::{Client, ClusterConfig, QueryStats, SimCheckpoints, SimCluster, SimStore};
use cql::Statement;
use exec::{Backend, Bound, CqlError, Outcome, bind_types, result_columns};

/// Frames longer than this close the connection (the framing cannot be trusted).
pub const MAX_FRAME: usize = 64 << 20;

/// Settings of a front.
#[derive(Clone, Debug)]
pub struct FrontConfig {
    /// Listeners: 127.0.0.1 … 127.0.0.`nodes`; the simulated cluster gets as many nodes.
    pub nodes: u32,
    /// The port every listener uses; 0 picks a free one.
    pub port: u16,
    /// Cap on rows per page (1 exercises paging hard).
    pub max_page_rows: Option<usize>,
    /// The simulated cluster (its `nodes` is overridden by `nodes`).
    pub cluster: ClusterConfig,
    /// Seed of the cluster's randomness (tokens, stream ids, skew).
    pub seed: Seed,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            nodes: 1,
            port: 0,
            max_page_rows: None,
            cluster: ClusterConfig {
                clock_skew_ms: 0,
                ..ClusterConfig::default()
            },
            seed: Seed(1),
        }
    }
}

/// Counters of a running front.
#[derive(Debug, Default)]
pub struct FrontStats {
    /// Frames received.
    pub frames: AtomicU64,
    /// ERROR responses sent.
    pub errors: AtomicU64,
    /// CDC log rows served.
    pub log_rows: AtomicU64,
    /// Rows responses that said more pages follow.
    pub paged: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

enum Command {
    JoinNode(async_channel::Sender<i64>),
    LeaveNode(async_channel::Sender<Option<i64>>),
    ForgetPrepared,
    SetUnavailable(bool),
    Stats(async_channel::Sender<QueryStats>),
    Stop,
}

/// A running front; dropping it stops the server.
#[derive(Debug)]
pub struct FrontHandle {
    /// The listeners' addresses (node order).
    pub addrs: Vec<SocketAddr>,
    /// Counters.
    pub stats: Arc<FrontStats>,
    cmd: async_channel::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::JoinNode(_) => "JoinNode",
            Command::LeaveNode(_) => "LeaveNode",
            Command::ForgetPrepared => "ForgetPrepared",
            Command::SetUnavailable(_) => "SetUnavailable",
            Command::Stats(_) => "Stats",
            Command::Stop => "Stop",
        })
    }
}

impl FrontHandle {
    /// The first node's `host:port`.
    pub fn contact(&self) -> String {
        self.addrs[0].to_string()
    }

    /// A node joins the simulated ring: a new CDC generation is announced. Returns its start
    /// (ms since the epoch).
    pub fn join_node(&self) -> Option<i64> {
        let (tx, rx) = async_channel::bounded(1);
        self.cmd.send_blocking(Command::JoinNode(tx)).ok()?;
        rx.recv_blocking().ok()
    }

    /// The newest node leaves the ring (never the last one): a new CDC generation. Returns its
    /// start, or `None` if no node could leave.
    pub fn leave_node(&self) -> Option<i64> {
        let (tx, rx) = async_channel::bounded(1);
        self.cmd.send_blocking(Command::LeaveNode(tx)).ok()?;
        rx.recv_blocking().ok().flatten()
    }

    /// Forgets every prepared statement (clients then get UNPREPARED and must re-prepare).
    pub fn forget_prepared(&self) {
        let _ = self.cmd.send_blocking(Command::ForgetPrepared);
    }

    /// Makes every request fail with Unavailable, or stops doing so.
    pub fn set_unavailable(&self, on: bool) {
        let _ = self.cmd.send_blocking(Command::SetUnavailable(on));
    }

    /// The cluster's request counters.
    pub fn query_stats(&self) -> QueryStats {
        let (tx, rx) = async_channel::bounded(1);
        if self.cmd.send_blocking(Command::Stats(tx)).is_err() {
            return QueryStats::default();
        }
        rx.recv_blocking().unwrap_or_default()
    }
}

impl Drop for FrontHandle {
    fn drop(&mut self) {
        let _ = self.cmd.send_blocking(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a front could not start.
#[derive(Debug)]
pub struct FrontError(pub String);

impl std::fmt::Display for FrontError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrontError {}

/// A prepared statement.
#[derive(Clone, Debug)]
struct Prepared {
    text: String,
    stmt: Statement,
    binds: Vec<(String, catalog::Ty)>,
}

struct Shared {
    backend: Backend,
    prepared: RefCell<HashMap<Vec<u8>, Rc<Prepared>>>,
    stats: Arc<FrontStats>,
}

/// Starts a front on its own thread.
pub fn start(config: FrontConfig) -> Result<FrontHandle, FrontError> {
    if config.nodes == 0 || config.nodes > 200 {
        return Err(FrontError(format!(
            "nodes = {}: the front listens on 127.0.0.1 … 127.0.0.200",
            config.nodes
        )));
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vec<SocketAddr>, String>>();
    let (cmd_tx, cmd_rx) = async_channel::unbounded();
    let stats = Arc::new(FrontStats::default());
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("cql-front".into())
        .spawn(move || serve(config, ready_tx, cmd_rx, thread_stats))
        .map_err(|e| FrontError(e.to_string()))?;
    match ready_rx.recv() {
        Ok(Ok(addrs)) => Ok(FrontHandle {
            addrs,
            stats,
            cmd: cmd_tx,
            thread: Some(thread),
        }),
        Ok(Err(e)) => Err(FrontError(e)),
        Err(_) => Err(FrontError("the front thread died while starting".into())),
    }
}

fn serve(
    config: FrontConfig,
    ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, String>>,
    cmd: async_channel::Receiver<Command>,
    stats: Arc<FrontStats>,
) {
    let ex = Rc::new(smol::LocalExecutor::new());
    smol::block_on(ex.run(async {
        let mut listeners = Vec::new();
        let mut port = config.port;
        for i in 0..config.nodes {
            let ip = Ipv4Addr::new(127, 0, 0, (i + 1) as u8);
            match smol::net::TcpListener::bind((ip, port)).await {
                Ok(l) => {
                    if port == 0 {
                        port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                    }
                    listeners.push((i, ip, l));
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot listen on {ip}:{port}: {e}")));
                    return;
                }
            }
        }
        let clock: Rc<dyn Clock> = Rc::new(WallClock);
        let mut cluster_cfg = config.cluster.clone();
        cluster_cfg.nodes = config.nodes;
        let cluster = SimCluster::new(
            cluster_cfg,
            WallClock.now().floor_ms(),
            config.seed.rng("front-cluster"),
            History::new(),
        );
        let backend = Backend {
            writer: SimStore::new(cluster.clone(), clock.clone(), Client::Writer),
            reader: SimStore::new(cluster.clone(), clock.clone(), Client::Relay),
            checkpoints: SimCheckpoints::new(cluster.clone(), clock.clone(), 0),
            listeners: listeners.iter().map(|(i, ip, _)| (*i, *ip)).collect(),
            max_page_rows: config.max_page_rows,
            cluster: cluster.clone(),
        };
        let shared = Rc::new(Shared {
            backend,
            prepared: RefCell::default(),
            stats,
        });
        let addrs = listeners
            .iter()
            .map(|(_, ip, _)| SocketAddr::from((*ip, port)))
            .collect();
        let _ = ready.send(Ok(addrs));
        for (node, ip, listener) in listeners {
            let (shared, ex2) = (shared.clone(), ex.clone());
            ex.spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                    ex2.spawn(connection(stream, shared.clone(), (node, ip), ex2.clone()))
                        .detach();
                }
            })
            .detach();
        }
        while let Ok(c) = cmd.recv().await {
            match c {
                // At the true time, not a floored one: the cluster records the change in the
                // history, whose times never go back, and a write may have been recorded within
                // this millisecond. The generation's start is whole milliseconds anyway.
                Command::JoinNode(reply) => {
                    let start = cluster.join_node(WallClock.now());
                    let _ = reply.send(start.as_millis()).await;
                }
                Command::LeaveNode(reply) => {
                    let start = cluster.leave_node(WallClock.now());
                    let _ = reply.send(start.map(|s| s.as_millis())).await;
                }
                Command::ForgetPrepared => shared.prepared.borrow_mut().clear(),
                Command::SetUnavailable(on) => cluster.set_unavailable(on),
                Command::Stats(reply) => {
                    let _ = reply.send(cluster.stats()).await;
                }
                Command::Stop => break,
            }
        }
    }));
}

fn prepared_id(text: &str) -> Vec<u8> {
    use std::hash::Hasher;
    let mut a = fnv::FnvHasher::default();
    a.write(text.as_bytes());
    let mut b = fnv::FnvHasher::with_key(0x9e37_79b9_7f4a_7c15);
    b.write(text.as_bytes());
    let mut id = a.finish().to_be_bytes().to_vec();
    id.extend_from_slice(&b.finish().to_be_bytes());
    id
}

fn frame(stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(0x84);
    out.push(0);
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(opcode);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

const OP_ERROR: u8 = 0x00;
const OP_READY: u8 = 0x02;
const OP_SUPPORTED: u8 = 0x06;
const OP_RESULT: u8 = 0x08;

async fn connection(
    mut stream: smol::net::TcpStream,
    shared: Rc<Shared>,
    node: (u32, Ipv4Addr),
    ex: Rc<smol::LocalExecutor<'static>>,
) {
    let (tx, rx) = async_channel::unbounded::<Vec<u8>>();
    let mut writer = stream.clone();
    let write_task = ex.spawn(async move {
        while let Ok(buf) = rx.recv().await {
            if writer.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let keyspace = Rc::new(RefCell::new(String::new()));
    loop {
        let mut header = [0u8; 9];
        if stream.read_exact(&mut header).await.is_err() {
            break;
        }
        shared.stats.frames.fetch_add(1, Ordering::Relaxed);
        let stream_id = i16::from_be_bytes([header[2], header[3]]);
        let opcode = header[4];
        let len = u32::from_be_bytes(header[5..9].try_into().expect("4")) as usize;
        if len > MAX_FRAME {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            let e = CqlError::Protocol(format!("frame of {len} bytes exceeds {MAX_FRAME}"));
            let _ = tx.send(frame(stream_id, OP_ERROR, &e.body())).await;
            break;
        }
        let mut body = vec![0u8; len];
        if stream.read_exact(&mut body).await.is_err() {
            break;
        }
        if header[0] != 0x04 {
            shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            let e = CqlError::Protocol(format!(
                "unsupported protocol version {} (this front speaks v4)",
                header[0] & 0x7f
            ));
            let _ = tx.send(frame(stream_id, OP_ERROR, &e.body())).await;
            continue;
        }
        let (shared, tx, keyspace) = (shared.clone(), tx.clone(), keyspace.clone());
        ex.spawn(async move {
            let reply = match handle(&shared, opcode, &body, node, &keyspace).await {
                Ok((op, body)) => frame(stream_id, op, &body),
                Err(e) => {
                    shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                    frame(stream_id, OP_ERROR, &e.body())
                }
            };
            let _ = tx.send(reply).await;
        })
        .detach();
    }
    drop(tx);
    write_task.await;
}

fn opcode(op: u8) -> Option<Opcode> {
    Some(match op {
        0x01 => Opcode::Startup,
        0x05 => Opcode::Options,
        0x07 => Opcode::Query,
        0x09 => Opcode::Prepare,
        0x0A => Opcode::Execute,
        0x0B => Opcode::Register,
        0x0D => Opcode::Batch,
        0x0F => Opcode::AuthResponse,
        _ => return None,
    })
}

fn values(
    v: Option<&QueryValues>,
    binds: &[(String, catalog::Ty)],
) -> Result<Vec<catalog::V>, CqlError> {
    let raw: Vec<Value> = match v {
        None => Vec::new(),
        Some(QueryValues::SimpleValues(v)) => v.clone(),
        Some(QueryValues::NamedValues(_)) => {
            return Err(CqlError::Invalid(
                "named bind values are not supported".into(),
            ));
        }
    };
    if raw.len() != binds.len() {
        return Err(CqlError::Invalid(format!(
            "{} values bound, the statement has {} markers",
            raw.len(),
            binds.len()
        )));
    }
    raw.iter()
        .zip(binds)
        .map(|(v, (name, ty))| {
            let bytes = match v {
                Value::Some(b) => Some(b.as_slice()),
                Value::Null | Value::NotSet => None,
            };
            catalog::V::decode(ty, bytes)
                .map_err(|e| CqlError::Invalid(format!("value of {name}: {e}")))
        })
        .collect()
}

fn prepare(
    shared: &Shared,
    text: &str,
    keyspace: &str,
) -> Result<(Vec<u8>, Rc<Prepared>), CqlError> {
    let id = prepared_id(text);
    if let Some(p) = shared.prepared.borrow().get(&id) {
        return Ok((id, p.clone()));
    }
    let stmt = cql::parse(text).map_err(|e| CqlError::Invalid(format!("{e}: {text}")))?;
    let binds = bind_types(&stmt, keyspace, Statement::bind_count(text))?;
    let p = Rc::new(Prepared {
        text: text.to_string(),
        stmt,
        binds,
    });
    shared.prepared.borrow_mut().insert(id.clone(), p.clone());
    Ok((id, p))
}

fn rows_body(outcome: Outcome) -> Vec<u8> {
    let body = match outcome {
        Outcome::Void => ResResultBody::Void,
        Outcome::Rows {
            table,
            columns,
            rows,
            paging,
        } => {
            let mut flags = RowsMetadataFlags::GLOBAL_TABLE_SPACE;
            if paging.is_some() {
                flags |= RowsMetadataFlags::HAS_MORE_PAGES;
            }
            let col_specs: Vec<ColSpec> = columns
                .iter()
                .map(|(n, t)| ColSpec {
                    table_spec: None,
                    name: n.clone(),
                    col_type: t.option(),
                })
                .collect();
            ResResultBody::Rows(BodyResResultRows {
                metadata: RowsMetadata {
                    flags,
                    columns_count: col_specs.len() as i32,
                    paging_state: paging.map(CBytes::new),
                    new_metadata_id: None,
                    global_table_spec: Some(table.spec()),
                    col_specs,
                },
                rows_count: rows.len() as i32,
                rows_content: rows
                    .into_iter()
                    .map(|r| {
                        r.into_iter()
                            .map(|v| v.encode().map_or_else(CBytes::new_null, CBytes::new))
                            .collect()
                    })
                    .collect(),
                protocol_version: Version::V4,
            })
        }
    };
    body.serialize_to_vec(Version::V4)
}

async fn run(
    shared: &Shared,
    p: &Prepared,
    vals: Vec<catalog::V>,
    params: &cassandra_protocol::query::QueryParams,
    node: (u32, Ipv4Addr),
    keyspace: &str,
) -> Result<Outcome, CqlError> {
    let bound = Bound {
        stmt: &p.stmt,
        values: vals,
    };
    match &p.stmt {
        Statement::Select { .. } => {
            let paging = params.paging_state.as_ref().and_then(|c| c.as_slice());
            let out = shared
                .backend
                .select(
                    &bound,
                    keyspace,
                    params.page_size.map(|n| n.max(0) as usize),
                    paging,
                    node,
                )
                .await?;
            if let Outcome::Rows {
                table,
                rows,
                paging,
                ..
            } = &out
            {
                if table.name.ends_with("_scylla_cdc_log") {
                    shared
                        .stats
                        .log_rows
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                }
                if paging.is_some() {
                    shared.stats.paged.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(out)
        }
        Statement::Insert { .. } | Statement::Update { .. } => {
            let row = Backend::write_row(&bound)?;
            shared.backend.write(vec![row], params.timestamp).await
        }
        Statement::Create | Statement::Use(_) => Ok(Outcome::Void),
    }
}

async fn handle(
    shared: &Shared,
    op: u8,
    body: &[u8],
    node: (u32, Ipv4Addr),
    keyspace: &RefCell<String>,
) -> Result<(u8, Vec<u8>), CqlError> {
    let Some(opc) = opcode(op) else {
        return Err(CqlError::Protocol(format!(
            "unknown or server-side opcode 0x{op:02x}"
        )));
    };
    let req = RequestBody::try_from(body, opc, Version::V4)
        .map_err(|e| CqlError::Protocol(format!("malformed {opc:?} body: {e}")))?;
    let ks = keyspace.borrow().clone();
    match req {
        RequestBody::Options(_) => {
            let mut data = HashMap::new();
            data.insert("CQL_VERSION".to_string(), vec!["3.3.1".to_string()]);
            data.insert("COMPRESSION".to_string(), Vec::new());
            Ok((
                OP_SUPPORTED,
                BodyResSupported { data }.serialize_to_vec(Version::V4),
            ))
        }
        RequestBody::Startup(s) => match s.map.get("COMPRESSION") {
            Some(c) => Err(CqlError::Protocol(format!(
                "compression {c} is not supported"
            ))),
            None => Ok((OP_READY, Vec::new())),
        },
        RequestBody::Register(_) => Ok((OP_READY, Vec::new())),
        RequestBody::AuthResponse(_) => {
            Err(CqlError::Protocol("authentication is not required".into()))
        }
        RequestBody::Prepare(p) => {
            let (id, prepared) = prepare(shared, &p.query, &ks)?;
            let result = result_columns(&prepared.stmt, &ks)?;
            let (spec, cols) = match &result {
                Some((t, cols)) => (Some(t.spec()), cols.clone()),
                None => (None, Vec::new()),
            };
            let bind_table = match &prepared.stmt {
                Statement::Select {
                    keyspace: k, table, ..
                }
                | Statement::Insert {
                    keyspace: k, table, ..
                }
                | Statement::Update {
                    keyspace: k, table, ..
                } => exec::table(&ks, k, table).ok().map(|t| t.spec()),
                _ => None,
            };
            let to_specs = |cols: &[(String, catalog::Ty)]| -> Vec<ColSpec> {
                cols.iter()
                    .map(|(n, t)| ColSpec {
                        table_spec: None,
                        name: n.clone(),
                        col_type: t.option(),
                    })
                    .collect()
            };
            let col_specs = to_specs(&cols);
            let body = ResResultBody::Prepared(BodyResResultPrepared {
                id: CBytesShort::new(id),
                result_metadata_id: None,
                metadata: PreparedMetadata {
                    pk_indexes: Vec::new(),
                    global_table_spec: bind_table.or_else(|| spec.clone()),
                    col_specs: to_specs(&prepared.binds),
                },
                result_metadata: RowsMetadata {
                    flags: if spec.is_some() {
                        RowsMetadataFlags::GLOBAL_TABLE_SPACE
                    } else {
                        RowsMetadataFlags::NO_METADATA
                    },
                    columns_count: col_specs.len() as i32,
                    paging_state: None,
                    new_metadata_id: None,
                    global_table_spec: spec,
                    col_specs,
                },
            });
            Ok((OP_RESULT, body.serialize_to_vec(Version::V4)))
        }
        RequestBody::Query(q) => {
            let stmt =
                cql::parse(&q.query).map_err(|e| CqlError::Invalid(format!("{e}: {}", q.query)))?;
            if let Statement::Use(k) = &stmt {
                *keyspace.borrow_mut() = k.clone();
            }
            let binds = bind_types(&stmt, &ks, Statement::bind_count(&q.query))?;
            let p = Prepared {
                text: q.query.clone(),
                stmt,
                binds,
            };
            let vals = values(q.query_params.values.as_ref(), &p.binds)?;
            let out = run(shared, &p, vals, &q.query_params, node, &ks).await?;
            Ok((OP_RESULT, rows_body(out)))
        }
        RequestBody::Execute(e) => {
            let id = e.id.into_bytes().unwrap_or_default();
            let p = shared
                .prepared
                .borrow()
                .get(&id)
                .cloned()
                .ok_or(CqlError::Unprepared(id))?;
            let vals = values(e.query_parameters.values.as_ref(), &p.binds)?;
            let out = run(shared, &p, vals, &e.query_parameters, node, &ks).await?;
            Ok((OP_RESULT, rows_body(out)))
        }
        RequestBody::Batch(b) => {
            use cassandra_protocol::frame::message_batch::BatchQuerySubj;
            let mut rows = Vec::new();
            for q in &b.queries {
                let p = match &q.subject {
                    BatchQuerySubj::PreparedId(id) => {
                        let id = id.clone().into_bytes().unwrap_or_default();
                        shared
                            .prepared
                            .borrow()
                            .get(&id)
                            .cloned()
                            .ok_or(CqlError::Unprepared(id))?
                    }
                    BatchQuerySubj::QueryString(text) => prepare(shared, text, &ks)?.1,
                };
                let vals = values(Some(&q.values), &p.binds)?;
                rows.push(Backend::write_row(&Bound {
                    stmt: &p.stmt,
                    values: vals,
                })?);
                let _ = &p.text;
            }
            let out = shared.backend.write(rows, b.timestamp).await?;
            Ok((OP_RESULT, rows_body(out)))
        }
        other => Err(CqlError::Protocol(format!("unsupported request {other:?}"))),
    }
}

/// The front's counters by name (for tests and `serve` diagnostics).
pub fn describe(stats: &FrontStats) -> BTreeMap<&'static str, u64> {
    [
        ("frames", stats.frames.load(Ordering::Relaxed)),
        ("errors", stats.errors.load(Ordering::Relaxed)),
        ("log_rows", stats.log_rows.load(Ordering::Relaxed)),
        ("paged", stats.paged.load(Ordering::Relaxed)),
        ("connections", stats.connections.load(Ordering::Relaxed)),
    ]
    .into_iter()
    .collect()
}

/// How long a client should allow for the front to answer (it runs simulated latencies).
pub const SUGGESTED_TIMEOUT: Duration = Duration::from_secs(10);
