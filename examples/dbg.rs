use outbox_sim::history::{CheckpointWhat, OpKind};
use outbox_sim::hunt::RelaySpec;
use outbox_sim::model::Timestamp;
use outbox_sim::scenario::{Scenario, run_world};
use outbox_sim::seed::Seed;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sc = Scenario::load(std::path::Path::new(&args[1])).unwrap();
    let spec = RelaySpec::parse(&args[2]).unwrap();
    let seed: u64 = args[3].parse().unwrap();
    let (r, sim) = run_world(&sc, spec.relay(&sc), Seed(seed)).unwrap();
    println!("lost {} reord {}", r.lost, r.reordered);
    let lost = r.anomalies.iter().find_map(|a| a.event()).unwrap();
    let cluster = sim.cluster();
    let st = cluster.state();
    let all: Vec<_> = st
        .topology
        .generations
        .iter()
        .flat_map(|g| g.streams())
        .collect();
    let page = st.log.read(
        &all,
        Timestamp::MIN.offset_micros(1),
        Timestamp::MAX,
        None,
        usize::MAX,
        sim.now(),
    );
    let row = page.rows.iter().find(|r| r.event.id == lost).unwrap();
    let group = st.topology.generations[0]
        .groups
        .iter()
        .find(|g| g.streams.contains(&row.stream_id))
        .unwrap()
        .clone();
    println!(
        "lost {} stream {} time {} group {:?}",
        lost,
        row.stream_id,
        row.time.timestamp(),
        group.streams
    );
    for a in r.anomalies.iter().take(5) {
        println!("  {a}");
    }
    for op in sim.history().ops().iter() {
        match &op.kind {
            OpKind::RelayStarted { .. }
            | OpKind::RelayCrashed { .. }
            | OpKind::RelayExited { .. }
            | OpKind::Fault { .. } => println!("{} {:?}", op.at, op.kind),
            OpKind::CheckpointSaved {
                what: CheckpointWhat::Stream(s),
                position,
                incarnation,
            } if group.streams.contains(s) => {
                println!("{} save {} {} inc {}", op.at, s, position, incarnation)
            }
            OpKind::CheckpointLoaded {
                what: CheckpointWhat::Stream(s),
                position,
                incarnation,
            } if group.streams.contains(s) => println!(
                "{} load {} {:?} inc {}",
                op.at,
                s,
                position.map(|p| p.to_string()),
                incarnation
            ),
            OpKind::Committed { event, .. } | OpKind::Published { event, .. } if *event == lost => {
                println!("{} {:?}", op.at, op.kind)
            }
            _ => {}
        }
    }
}
