//! Properties of `lb::maglev`: exact weighted shares, independence from input
//! order, minimal disruption on backend removal/addition, input validation,
//! and a pinned table that must never change (every node, every version).
//! Inputs are pseudo-random from a fixed seed, so failures reproduce.
use lb::maglev::{
    diff, diff_by, entries_per_backend, siphash13, Maglev, MaglevError, MAX_BACKENDS, NO_BACKEND,
};

/// splitmix64: a deterministic input generator for the properties below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

fn endpoints(n: usize) -> Vec<(String, u32)> {
    (0..n).map(|i| (format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255), 1)).collect()
}

/// The table as backend names, to compare tables over different inputs.
fn by_name<'a>(table: &[u16], backends: &'a [(String, u32)]) -> Vec<&'a str> {
    table.iter().map(|&i| backends[usize::from(i)].0.as_str()).collect()
}

fn check_shares(m: u32, backends: &[(String, u32)]) {
    let mg = Maglev::new(m).unwrap();
    let table = mg.build(backends).unwrap();
    assert_eq!(table.len(), m as usize);
    let counts = entries_per_backend(&table, backends.len());
    assert_eq!(
        counts.iter().map(|&c| u64::from(c)).sum::<u64>(),
        u64::from(m),
        "an entry is out of range"
    );
    assert_eq!(counts, mg.quotas(backends).unwrap(), "M={m}: counts differ from quotas");
    let total: u128 = backends.iter().map(|b| u128::from(b.1)).sum();
    for ((name, w), &c) in backends.iter().zip(&counts) {
        let share = u128::from(m) * u128::from(*w);
        let floor = share / total;
        let ceil = floor + u128::from(share % total != 0);
        assert!(
            (floor..=ceil).contains(&u128::from(c)),
            "M={m} N={} backend {name} weight {w}: {c} entries, want {floor} or {ceil}",
            backends.len()
        );
    }
}

#[test]
fn every_backend_gets_floor_or_ceil_of_its_weighted_share() {
    let mut rng = Rng(0x5eed_0001);
    let primes = [2, 3, 13, 101, 1021, 4093, 16381, 65537];
    for case in 0..300 {
        let m = primes[case % primes.len()];
        let n = 1 + rng.below(u64::from(m).min(300)) as usize;
        let max_w = [1, 2, 10, 1000, u64::from(u32::MAX)][case % 5];
        let mut backends = endpoints(n);
        for b in &mut backends {
            b.1 = 1 + rng.below(max_w) as u32;
        }
        check_shares(m, &backends);
    }
}

#[test]
fn skewed_weights_keep_exact_shares() {
    // One heavy backend among many light ones, and the reverse.
    let mut backends = endpoints(500);
    backends[7].1 = 100_000;
    check_shares(16381, &backends);
    check_shares(65537, &backends);
    for b in &mut backends {
        b.1 = 1000;
    }
    backends[499].1 = 1;
    check_shares(16381, &backends);
}

#[test]
fn table_does_not_depend_on_input_order() {
    let mut rng = Rng(0x5eed_0002);
    for (m, n) in [(13, 5), (1021, 100), (16381, 100), (65537, 1000)] {
        let mut backends = endpoints(n);
        for b in &mut backends {
            b.1 = 1 + rng.below(5) as u32;
        }
        let mg = Maglev::new(m).unwrap();
        let want = by_name(&mg.build(&backends).unwrap(), &backends).join(",");
        for _ in 0..3 {
            let mut shuffled = backends.clone();
            rng.shuffle(&mut shuffled);
            let got = mg.build(&shuffled).unwrap();
            assert_eq!(by_name(&got, &shuffled).join(","), want, "M={m} N={n}");
        }
    }
}

/// Slots that changed backend, and slots that changed although both tables
/// name a backend present in both (the avoidable moves).
fn moves(
    old: &[u16],
    old_b: &[(String, u32)],
    new: &[u16],
    new_b: &[(String, u32)],
) -> (usize, usize) {
    let (o, n) = (by_name(old, old_b), by_name(new, new_b));
    let in_new = |name: &str| new_b.iter().any(|b| b.0 == name);
    let in_old = |name: &str| old_b.iter().any(|b| b.0 == name);
    let changed = diff_by(
        old,
        new,
        |i| old_b[usize::from(i)].0.as_str(),
        |i| new_b[usize::from(i)].0.as_str(),
    );
    let survivors_moved =
        o.iter().zip(&n).filter(|(a, b)| a != b && in_new(a) && in_old(b)).count();
    (changed, survivors_moved)
}

/// Allowed disruption, in multiples of the ideal 1/N, at M = 16381. Exact
/// quotas couple the backends, so the excess over 1 grows like sqrt(N/M):
/// measured 1.03 at N = 10 and 1.6-1.7 at N = 100 (the paper's fill: 1.05
/// and 2.7). The bound for N = 100 catches a regression to the paper's fill.
fn bound(n: usize) -> f64 {
    if n <= 10 {
        1.5
    } else {
        1.8
    }
}

#[test]
fn removing_one_backend_moves_about_one_nth() {
    let m = 16381u32;
    let mg = Maglev::new(m).unwrap();
    let mut rng = Rng(0x5eed_0003);
    for n in [10usize, 100] {
        let all = endpoints(n);
        let before = mg.build(&all).unwrap();
        for _ in 0..5 {
            let gone = rng.below(n as u64) as usize;
            let mut rest = all.clone();
            rest.remove(gone);
            let after = mg.build(&rest).unwrap();
            let (changed, survivors_moved) = moves(&before, &all, &after, &rest);
            let frac = changed as f64 / f64::from(m);
            let ideal = 1.0 / n as f64;
            assert!(
                frac >= ideal * 0.9,
                "N={n}: only {frac:.4} moved, the removed backend held ~{ideal:.4}"
            );
            assert!(
                frac <= bound(n) * ideal,
                "N={n} removing {}: {frac:.4} of entries moved, ideal {ideal:.4}",
                all[gone].0
            );
            assert!(
                (survivors_moved as f64) <= (bound(n) - 1.0) * ideal * f64::from(m),
                "N={n}: {survivors_moved} entries moved between surviving backends"
            );
        }
    }
}

#[test]
fn adding_one_backend_moves_about_one_nth() {
    let m = 16381u32;
    let mg = Maglev::new(m).unwrap();
    for n in [10usize, 100] {
        let all = endpoints(n + 1);
        for added in [0, n / 2, n] {
            let mut before_b = all.clone();
            before_b.remove(added);
            let before = mg.build(&before_b).unwrap();
            let after = mg.build(&all).unwrap();
            let (changed, survivors_moved) = moves(&before, &before_b, &after, &all);
            let frac = changed as f64 / f64::from(m);
            let ideal = 1.0 / (n + 1) as f64;
            assert!(frac >= ideal * 0.9, "N={n}+1: only {frac:.4} moved");
            assert!(
                frac <= bound(n) * ideal,
                "N={n}+1 adding {}: {frac:.4} of entries moved, ideal {ideal:.4}",
                all[added].0
            );
            assert!(
                (survivors_moved as f64) <= (bound(n) - 1.0) * ideal * f64::from(m),
                "N={n}+1: {survivors_moved} entries moved between existing backends"
            );
        }
    }
}

#[test]
fn changing_one_weight_moves_about_the_weight_change() {
    let m = 16381u32;
    let mg = Maglev::new(m).unwrap();
    let before_b = endpoints(20);
    let mut after_b = before_b.clone();
    after_b[3].1 = 2; // 1/20 -> 2/21 of the table
    let before = mg.build(&before_b).unwrap();
    let after = mg.build(&after_b).unwrap();
    let changed = diff(&before, &after) as f64 / f64::from(m); // same names, same order
    let ideal = 2.0 / 21.0 - 1.0 / 20.0;
    assert!(
        changed >= ideal * 0.9 && changed <= ideal * 2.0,
        "{changed:.4} moved, ideal {ideal:.4}"
    );
}

#[test]
fn scaling_all_weights_changes_nothing() {
    let mut rng = Rng(0x5eed_0005);
    let mg = Maglev::new(4093).unwrap();
    let mut base = endpoints(50);
    for b in &mut base {
        b.1 = 1 + rng.below(4) as u32;
    }
    let want = mg.build(&base).unwrap();
    for factor in [3, 1000] {
        let scaled: Vec<(String, u32)> =
            base.iter().map(|(n, w)| (n.clone(), w * factor)).collect();
        assert_eq!(mg.build(&scaled).unwrap(), want, "weights x{factor}");
    }
    let ones: Vec<(String, u32)> = base.iter().map(|(n, _)| (n.clone(), 7)).collect();
    assert_eq!(mg.build(&ones).unwrap(), mg.build(&endpoints(50)).unwrap(), "all 7 vs all 1");
}

#[test]
fn bad_sizes_are_rejected() {
    for size in [0, 1, 4, 9, 100, 16384, 65536, 65535] {
        assert!(Maglev::new(size).is_err(), "size {size} accepted");
    }
    assert_eq!(Maglev::new(16383), Err(MaglevError::NotPrime { size: 16383 }));
    let big = lb::maglev::MAX_SIZE + 43; // 16777259, a prime beyond the limit
    assert!(matches!(Maglev::new(big), Err(MaglevError::SizeOutOfRange { .. })));
    for size in [2, 3, 13, 16381, 65537] {
        assert_eq!(Maglev::new(size).unwrap().size(), size);
    }
}

#[test]
fn bad_backend_sets_are_rejected_with_the_name() {
    let mg = Maglev::new(13).unwrap();
    let dup = [("b", 1), ("a", 1), ("b", 2)];
    assert_eq!(mg.build(&dup), Err(MaglevError::DuplicateName { name: "b".into() }));
    let zero = [("a", 1), ("c", 0)];
    assert_eq!(mg.build(&zero), Err(MaglevError::ZeroWeight { name: "c".into() }));
    let too_many = endpoints(14);
    assert_eq!(mg.build(&too_many), Err(MaglevError::TooManyBackends { count: 14, size: 13 }));
    let mut out = vec![0u16; 12];
    assert_eq!(
        mg.build_into(&[("a", 1)], &mut out),
        Err(MaglevError::OutputLength { len: 12, size: 13 })
    );
    let msg = MaglevError::DuplicateName { name: "10.0.0.1:80".into() }.to_string();
    assert!(msg.contains("10.0.0.1:80"), "{msg}");
}

#[test]
fn zero_and_one_backend() {
    let mg = Maglev::new(16381).unwrap();
    let none: [(&str, u32); 0] = [];
    assert!(mg.build(&none).unwrap().is_empty());
    let mut out = vec![7u16; 16381];
    mg.build_into(&none, &mut out).unwrap();
    assert!(out.iter().all(|&e| e == NO_BACKEND));
    let one = mg.build(&[("only", 5)]).unwrap();
    assert!(one.len() == 16381 && one.iter().all(|&e| e == 0));
}

#[test]
fn size_65537_with_a_thousand_weighted_backends() {
    let mut rng = Rng(0x5eed_0004);
    let mut backends = endpoints(1000);
    for b in &mut backends {
        b.1 = 1 + rng.below(3) as u32;
    }
    check_shares(65537, &backends);
    let mg = Maglev::new(65537).unwrap();
    let mut out = vec![0u16; 65537];
    mg.build_into(&backends, &mut out).unwrap();
    assert_eq!(out, mg.build(&backends).unwrap());
}

#[test]
fn as_many_backends_as_slots_and_the_u16_limit() {
    // N == M: every backend gets exactly one slot.
    let mg = Maglev::new(1021).unwrap();
    let t = mg.build(&endpoints(1021)).unwrap();
    assert!(entries_per_backend(&t, 1021).iter().all(|&c| c == 1));
    let mg = Maglev::new(65537).unwrap();
    let max = endpoints(MAX_BACKENDS);
    let t = mg.build(&max).unwrap();
    let counts = entries_per_backend(&t, MAX_BACKENDS);
    assert!(counts.iter().all(|&c| c == 1 || c == 2), "65535 backends in 65537 slots");
    assert!(t.iter().all(|&e| e != NO_BACKEND));
    let over = endpoints(MAX_BACKENDS + 1);
    assert!(matches!(mg.build(&over), Err(MaglevError::TooManyBackends { count: 65536, .. })));
}

#[test]
fn seed_changes_the_table() {
    let b = endpoints(10);
    let a = Maglev::new(16381).unwrap().build(&b).unwrap();
    let c = Maglev::with_seed(16381, 42).unwrap().build(&b).unwrap();
    assert!(diff(&a, &c) > 16381 / 2);
    assert_eq!(a, Maglev::with_seed(16381, 0).unwrap().build(&b).unwrap());
}

/// These values define the cluster-wide table: a change here means nodes on
/// different xlb versions disagree on every flow. Never update them casually.
#[test]
fn pinned_hash_and_table() {
    // SipHash-1-3 under the zero key, as computed by Rust 1.x std's
    // DefaultHasher::new() when these were pinned (an independent check of
    // the in-house implementation).
    for (msg, want) in PINNED_SIP13_ZERO_KEY {
        assert_eq!(siphash13(0, 0, msg.as_bytes()), want, "{msg:?}");
    }
    assert_eq!(Maglev::new(16381).unwrap().permutation("10.244.1.10:80"), PINNED_PERMUTATION);
    let t = Maglev::new(13).unwrap().build(&[("c", 1), ("a", 1), ("b", 2)]).unwrap();
    assert_eq!(t, PINNED_TABLE_13);
}

const PINNED_SIP13_ZERO_KEY: [(&str, u64); 4] = [
    ("", 0xd1fb_a762_150c_532c),
    ("a", 0x4074_48d2_b89b_1813),
    ("10.244.1.10:80", 0xc7a7_11a3_a85c_a21b),
    ("0123456789abcdefXYZ", 0x283e_7687_cd67_183b),
];
const PINNED_PERMUTATION: (u32, u32) = (9263, 6720);
// Caller indices: 0 = "c" (3 entries), 1 = "a" (3), 2 = "b" (weight 2: 7).
const PINNED_TABLE_13: [u16; 13] = [0, 2, 2, 0, 0, 2, 2, 1, 1, 2, 2, 2, 1];
