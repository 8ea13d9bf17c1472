fn main() {
    let seed: u64 = std::env::args().nth(1).unwrap().parse().unwrap();
    let s = outbox_sim::hunt::swarm_scenario(
        &outbox_sim::hunt::hunt_scenario(),
        outbox_sim::seed::Seed(seed),
    );
    print!("{}", outbox_sim::hunt::scenario_toml(&s));
}
