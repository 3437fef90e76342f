//! Tests for the transaction generator.

use std::collections::HashMap;

use super::calendar::{self, DAY_MS, HOUR_MS};
use super::catalog::{BRANDS, COLORS, FuelType};
use super::dealers::DEALERS;
use super::record::write_str;
use super::*;

fn sim(seed: u64, mean_per_hour: f64) -> Generator {
    Generator::new(GeneratorConfig {
        seed,
        clock: Clock::Simulated {
            start_ms: DEFAULT_START_MS,
            mean_per_hour,
        },
    })
}

fn dealer_of(t: &Transaction) -> &'static dealers::Dealer {
    let n: usize = t.dealer_id[1..].parse().unwrap();
    &DEALERS[n - 1]
}

#[test]
fn default_start_is_2026_new_year() {
    assert_eq!(
        DEFAULT_START_MS,
        calendar::days_from_civil(2026, 1, 1) * DAY_MS
    );
    let s = calendar::format_timestamp_ms(DEFAULT_START_MS);
    assert_eq!(&s, b"2026-01-01T00:00:00.000Z");
}

#[test]
fn deterministic_for_same_seed_and_clock() {
    let mut a = sim(7, 5_000.0);
    let mut b = sim(7, 5_000.0);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..20_000 {
        a.write_json(&mut x);
        b.write_json(&mut y);
    }
    assert_eq!(x, y);
    assert_eq!(a.generated(), 20_000);
    assert_eq!(a.clock_ms(), b.clock_ms());

    // The owned path walks the same sequence.
    let mut c = sim(7, 5_000.0);
    let mut z = Vec::new();
    for _ in 0..20_000 {
        c.next_transaction().write_json(&mut z);
    }
    assert_eq!(x, z);
}

#[test]
fn different_seeds_differ() {
    let a: Vec<Transaction> = sim(1, 1_000.0).take(100).collect();
    let b: Vec<Transaction> = sim(2, 1_000.0).take(100).collect();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert_eq!(same, 0);
    let ids: std::collections::HashSet<_> = a.iter().map(|t| &t.transaction_id).collect();
    assert!(b.iter().all(|t| !ids.contains(&t.transaction_id)));
}

#[test]
fn write_json_matches_serde_json() {
    let mut fast = sim(DEFAULT_SEED, 2_000.0);
    let mut slow = sim(DEFAULT_SEED, 2_000.0);
    let mut out = Vec::new();
    for _ in 0..20_000 {
        out.clear();
        fast.write_json(&mut out);
        let t = slow.next_transaction();
        let expected = serde_json::to_vec(&t).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(t.to_json().as_bytes(), &expected[..]);
    }
}

#[test]
fn json_key_order_and_round_trip() {
    let t = sim(3, 1_000.0).next_transaction();
    let json = t.to_json();
    let keys = [
        "transaction_id",
        "sold_at",
        "dealer_id",
        "dealer_city",
        "dealer_state",
        "brand",
        "model",
        "model_year",
        "body_type",
        "fuel_type",
        "color",
        "condition",
        "mileage_km",
        "price",
        "currency",
        "payment_method",
        "customer_age",
        "salesperson_id",
        "status",
    ];
    let mut pos = 0;
    for k in keys {
        let needle = format!("\"{k}\":");
        let at = json[pos..]
            .find(&needle)
            .unwrap_or_else(|| panic!("{k} in {json}"));
        pos += at + needle.len();
    }
    let back: Transaction = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v.as_object().unwrap().len(), keys.len());
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

#[test]
fn field_formats() {
    let mut g = sim(11, 3_000.0);
    let mut out = Vec::new();
    let (mut lease, mut lease_new) = (0u32, 0u32);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..50_000 {
        out.clear();
        g.write_json(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        let t: Transaction = serde_json::from_str(text).unwrap();
        assert!(is_uuid_v4(&t.transaction_id), "{}", t.transaction_id);
        assert!(ids.insert(t.transaction_id.clone()));

        // sold_at: RFC 3339, UTC, milliseconds, Z.
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let sold_at = v["sold_at"].as_str().unwrap();
        assert_eq!(sold_at.len(), 24);
        assert!(sold_at.ends_with('Z') && sold_at.as_bytes()[19] == b'.');
        assert!(chrono::DateTime::parse_from_rfc3339(sold_at).is_ok());

        // price: JSON number with exactly two decimals that parses back.
        let p = text.split("\"price\":").nth(1).unwrap();
        let p = &p[..p.find(',').unwrap()];
        let (_, decimals) = p.split_once('.').unwrap();
        assert_eq!(decimals.len(), 2, "{p}");
        assert_eq!(p.parse::<Price>().unwrap(), t.price);
        assert!(v["price"].is_f64());
        assert!(t.price.cents() >= 149_900 && t.price.cents() < 100_000_000);

        assert_eq!(t.dealer_state.len(), 2);
        assert!(t.salesperson_id.starts_with(&format!("{}-S", t.dealer_id)));
        assert_eq!(t.currency, "USD");
        if let Some(age) = t.customer_age {
            assert!((18..=90).contains(&age));
        }
        if t.condition == "new" {
            assert!(t.mileage_km < 50);
        } else {
            assert!(t.mileage_km > 1_000, "{t:?}");
        }
        if t.payment_method == "lease" {
            lease += 1;
            lease_new += u32::from(t.condition == "new");
        }
        if t.brand == "Tesla" {
            assert_eq!(t.fuel_type, "electric");
        }
    }
    assert!(lease > 1_000);
    assert!(f64::from(lease_new) / f64::from(lease) > 0.85);
}

#[test]
fn market_shares_within_tolerance() {
    let n = 100_000;
    let mut g = sim(5, 10_000.0);
    let mut brands: HashMap<String, u32> = HashMap::new();
    let mut colors: HashMap<String, u32> = HashMap::new();
    let mut condition: HashMap<String, u32> = HashMap::new();
    let mut status: HashMap<String, u32> = HashMap::new();
    let mut null_age = 0;
    for _ in 0..n {
        let t = g.next_transaction();
        *brands.entry(t.brand).or_default() += 1;
        *colors.entry(t.color).or_default() += 1;
        *condition.entry(t.condition).or_default() += 1;
        *status.entry(t.status).or_default() += 1;
        null_age += u32::from(t.customer_age.is_none());
    }
    let frac = |m: &HashMap<String, u32>, k: &str| f64::from(*m.get(k).unwrap_or(&0)) / n as f64;
    let close = |got: f64, want: f64| (got - want).abs() <= 0.004 + 0.05 * want;

    let total: f32 = BRANDS.iter().map(|b| b.share).sum();
    for b in BRANDS {
        let want = f64::from(b.share / total);
        assert!(close(frac(&brands, b.name), want), "{} {}", b.name, want);
    }
    let total: f32 = COLORS.iter().map(|c| c.share).sum();
    for c in COLORS {
        assert!(close(frac(&colors, c.name), f64::from(c.share / total)));
    }
    assert!(close(frac(&condition, "new"), 0.55));
    assert!(close(frac(&condition, "used"), 0.38));
    assert!(close(frac(&condition, "certified"), 0.07));
    assert!(close(frac(&status, "completed"), 0.94));
    assert!(close(frac(&status, "cancelled"), 0.04));
    assert!(close(frac(&status, "refunded"), 0.02));
    assert!(close(f64::from(null_age) / n as f64, 0.04));
    assert!(frac(&brands, "Toyota") > frac(&brands, "Audi"));
}

#[test]
fn realistic_vehicle_values() {
    let mut g = sim(9, 10_000.0);
    let (mut new_sum, mut new_n, mut km_per_year, mut used_n) = (0.0, 0.0, 0.0, 0.0);
    let mut diesel_pickups = 0;
    for _ in 0..50_000 {
        let t = g.next_transaction();
        let year: i64 = t.sold_at.format("%Y").to_string().parse().unwrap();
        let my = i64::from(t.model_year);
        match t.condition.as_str() {
            "new" => {
                assert!(my == year || my == year + 1, "{t:?}");
                new_sum += t.price.as_f64();
                new_n += 1.0;
            }
            _ => {
                assert!(my < year && my >= year - 15, "{t:?}");
                km_per_year += f64::from(t.mileage_km) / ((year - my) as f64);
                used_n += 1.0;
            }
        }
        if t.fuel_type == "diesel" && t.body_type == "pickup" {
            diesel_pickups += 1;
        }
    }
    let avg_new = new_sum / new_n;
    assert!((30_000.0..60_000.0).contains(&avg_new), "{avg_new}");
    let avg_km = km_per_year / used_n;
    assert!((10_000.0..25_000.0).contains(&avg_km), "{avg_km}");
    assert!(diesel_pickups > 100);
}

/// Local (dealer time zone) hour of day and weekday (Monday = 0).
fn local_hour_weekday(t: &Transaction) -> (usize, usize) {
    let ms = t.sold_at_ms();
    let offset = dealer_of(t).tz.offset_hours(calendar::is_us_dst(ms));
    let local = ms + offset * HOUR_MS;
    let hour = local.rem_euclid(DAY_MS) / HOUR_MS;
    let wd = calendar::weekday_from_days(local.div_euclid(DAY_MS));
    (hour as usize, wd as usize)
}

#[test]
fn intensity_follows_daily_and_weekly_curve() {
    // Four weeks of event time at 300/h: ~200k events.
    let mut g = sim(13, 300.0);
    let end = DEFAULT_START_MS + 28 * DAY_MS;
    let mut by_hour = [0u32; 24];
    let mut by_day = [0u32; 7];
    let mut n = 0u32;
    while g.clock_ms() < end {
        let t = g.next_transaction();
        let (h, wd) = local_hour_weekday(&t);
        by_hour[h] += 1;
        by_day[wd] += 1;
        n += 1;
    }
    // Average rate matches mean_per_hour.
    let per_hour = f64::from(n) / (28.0 * 24.0);
    assert!((per_hour - 300.0).abs() < 15.0, "{per_hour}");
    let afternoon: u32 = by_hour[14..18].iter().sum();
    let night: u32 = by_hour[..7].iter().sum::<u32>() + by_hour[22..].iter().sum::<u32>();
    assert!(afternoon > 20 * night.max(1), "{by_hour:?}");
    assert!(by_hour[15] > 10 * by_hour[3].max(1));
    assert!(by_day[5] > by_day[1] * 3 / 2, "{by_day:?}");
    assert!(by_day[5] > by_day[6], "{by_day:?}");

    assert!(relative_intensity(DEFAULT_START_MS + 2 * DAY_MS + 21 * HOUR_MS) > 1.0);
    assert!(relative_intensity(DEFAULT_START_MS + 2 * DAY_MS + 9 * HOUR_MS) < 0.1);
}

#[test]
fn jitter_is_bounded_and_sequence_roughly_ordered() {
    let mut g = sim(17, 20_000.0);
    let n = 200_000;
    let (mut late, mut max_seen, mut small, mut large) = (0, i64::MIN, 0, 0);
    let mut prev_clock = g.clock_ms();
    for _ in 0..n {
        let t = g.next_transaction();
        let ms = t.sold_at_ms();
        let clock = g.clock_ms();
        assert!(clock >= prev_clock);
        prev_clock = clock;
        assert!(ms <= clock);
        assert!(ms >= clock - MAX_LATENESS_MS, "{ms} vs {clock}");
        assert!(ms >= max_seen.saturating_sub(MAX_LATENESS_MS));
        let lag = clock - ms;
        if lag > 60_000 {
            large += 1;
        } else if lag >= 1_000 {
            small += 1;
        }
        if ms < max_seen {
            late += 1;
        }
        max_seen = max_seen.max(ms);
    }
    let f = |c: i32| f64::from(c) / f64::from(n);
    assert!((0.035..0.065).contains(&f(small)), "{}", f(small));
    assert!((0.002..0.008).contains(&f(large)), "{}", f(large));
    assert!(f(late) < 0.07, "{}", f(late));

    // Disabling jitter changes only sold_at, which is then the clock.
    let mut a = sim(17, 20_000.0);
    let mut b = sim(17, 20_000.0).with_jitter(false);
    for _ in 0..10_000 {
        let (x, mut y) = (a.next_transaction(), b.next_transaction());
        assert_eq!(y.sold_at_ms(), b.clock_ms());
        y.sold_at = x.sold_at;
        assert_eq!(x, y);
    }
}

#[test]
fn wall_clock_is_current_and_monotonic() {
    let before = chrono::Utc::now().timestamp_millis();
    let mut g = Generator::new(GeneratorConfig {
        seed: 1,
        clock: Clock::Wall,
    });
    assert!(!g.jitter_enabled());
    let mut prev = i64::MIN;
    for _ in 0..1_000 {
        let ms = g.next_transaction().sold_at_ms();
        assert!(ms >= prev && ms >= before);
        prev = ms;
    }
    assert!(prev <= chrono::Utc::now().timestamp_millis());
}

#[test]
fn bad_rates_are_sanitised() {
    for rate in [0.0, -5.0, f64::NAN, f64::INFINITY] {
        let mut g = sim(1, rate);
        let t = g.next_transaction();
        assert!(t.sold_at_ms() >= DEFAULT_START_MS - MAX_LATENESS_MS);
    }
    // Very high rates still work (many events per ms).
    let mut g = sim(1, 1e9);
    let first = g.next_transaction().sold_at_ms();
    for _ in 0..10_000 {
        g.next_transaction();
    }
    assert!(g.clock_ms() - first < 60_000);
}

#[test]
fn price_text_and_serde() {
    for (cents, text) in [
        (2_845_000, "28450.00"),
        (3_199_999, "31999.99"),
        (5, "0.05"),
        (0, "0.00"),
        (-150, "-1.50"),
        (i64::MIN, "-92233720368547758.08"),
    ] {
        assert_eq!(Price(cents).to_string(), text);
        if cents != i64::MIN {
            assert_eq!(text.parse::<Price>().unwrap(), Price(cents));
            assert_eq!(serde_json::to_string(&Price(cents)).unwrap(), text);
            assert_eq!(serde_json::from_str::<Price>(text).unwrap(), Price(cents));
        }
    }
    assert_eq!("12".parse::<Price>().unwrap(), Price(1_200));
    assert_eq!("12.5".parse::<Price>().unwrap(), Price(1_250));
    for bad in ["", "-", "1.", ".5", "1.234", "1e3", "abc", "+1"] {
        assert!(bad.parse::<Price>().is_err(), "{bad}");
    }
    assert_eq!(
        serde_json::from_str::<Price>("31999.99").unwrap(),
        Price(3_199_999)
    );
    assert_eq!(
        serde_json::from_str::<Price>("\"0.30\"").unwrap(),
        Price(30)
    );
    assert_eq!(serde_json::from_str::<Price>("7").unwrap(), Price(700));
    // Every cent value in a realistic range parses back exactly.
    for cents in (0..20_000_000).step_by(7_919) {
        let s = Price(cents).to_string();
        assert_eq!(serde_json::from_str::<Price>(&s).unwrap(), Price(cents));
    }
}

#[test]
fn string_escaping_matches_serde_json() {
    for s in [
        "plain",
        "quote\" backslash\\ slash/",
        "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
        "ünïcødé 🚗 São Paulo",
        "",
    ] {
        let mut out = Vec::new();
        write_str(&mut out, s);
        assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
    }
    // Every ASCII byte at every position of a string longer than one word.
    for c in 0u8..128 {
        for pos in 0..19 {
            let mut bytes = vec![b'a'; 19];
            bytes[pos] = c;
            let s = String::from_utf8(bytes).unwrap();
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }
    let mut t = sim(2, 100.0).next_transaction();
    t.dealer_city = "Coeur d'Alene \"ID\"\n".into();
    t.customer_age = None;
    assert_eq!(t.to_json(), serde_json::to_string(&t).unwrap());
}

#[test]
fn timestamp_formatting_matches_chrono() {
    let mut r = rng::Rng::new(3);
    let span = (calendar::MAX_TIMESTAMP_MS - calendar::MIN_TIMESTAMP_MS) as u64;
    for i in 0..20_000 {
        let ms = if i < 10_000 {
            calendar::MIN_TIMESTAMP_MS + r.range_u64(0, span) as i64
        } else {
            DEFAULT_START_MS + r.range_u64(0, 400 * DAY_MS as u64) as i64
        };
        let ours = calendar::format_timestamp_ms(ms);
        let theirs = chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        assert_eq!(std::str::from_utf8(&ours).unwrap(), theirs);
    }
    // Out-of-range values clamp instead of failing.
    assert_eq!(
        &calendar::format_timestamp_ms(i64::MAX),
        b"9999-12-31T23:59:59.999Z"
    );
    assert_eq!(
        &calendar::format_timestamp_ms(i64::MIN),
        b"0000-01-01T00:00:00.000Z"
    );
}

#[test]
fn us_dst_bounds() {
    let fmt = |ms| String::from_utf8(calendar::format_timestamp_ms(ms).to_vec()).unwrap();
    let (s, e) = calendar::us_dst_bounds_ms(2026);
    assert_eq!(fmt(s), "2026-03-08T07:00:00.000Z");
    assert_eq!(fmt(e), "2026-11-01T06:00:00.000Z");
    let (s, e) = calendar::us_dst_bounds_ms(2025);
    assert_eq!(fmt(s), "2025-03-09T07:00:00.000Z");
    assert_eq!(fmt(e), "2025-11-02T06:00:00.000Z");
    let mut cache = calendar::DstCache::new();
    for h in 0..(3 * 366 * 24) {
        let ms = DEFAULT_START_MS - 400 * DAY_MS + h * HOUR_MS + 1_234;
        assert_eq!(cache.lookup(ms), calendar::is_us_dst(ms));
    }
}

#[test]
fn catalog_shape() {
    assert!((18..=22).contains(&BRANDS.len()));
    for b in BRANDS {
        assert!((3..=6).contains(&b.models.len()), "{}", b.name);
        for m in b.models {
            assert!(m.msrp_usd >= 15_000 && m.fuel_mix.iter().sum::<f32>() > 0.0);
            if b.name == "Tesla" {
                assert_eq!(m.fuel_mix, [0.0, 0.0, 1.0, 0.0, 0.0]);
            }
        }
    }
    assert_eq!(DEALERS.len(), 150);
    for (i, d) in DEALERS.iter().enumerate() {
        assert_eq!(d.id, format!("D{:04}", i + 1));
        assert!((3..=12).contains(&d.salespeople));
        assert!(d.state.len() == 2 && d.state.bytes().all(|c| c.is_ascii_uppercase()));
    }
    assert_eq!(FuelType::ALL[4].as_str(), "plug-in hybrid");
    let rates = &sample::tables().rate;
    for row in rates {
        let mean = row.iter().sum::<f64>() / 168.0;
        assert!((mean - 1.0).abs() < 1e-9);
        assert!(row.iter().all(|&r| r > 0.0));
    }
}

#[test]
fn throughput_smoke() {
    let mut g = Generator::default();
    let mut out = Vec::with_capacity(64 << 20);
    let start = std::time::Instant::now();
    let n: u32 = 200_000;
    for _ in 0..n {
        g.write_json(&mut out);
        out.push(b'\n');
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "write_json: {n} rows, {} bytes, {:.0} rows/s (debug builds are slow)",
        out.len(),
        f64::from(n) / secs
    );
    assert_eq!(g.generated(), u64::from(n));
    assert_eq!(out.iter().filter(|&&c| c == b'\n').count(), n as usize);
}

#[test]
fn json_lines_are_what_write_json_writes() {
    let mut a = Generator::new(GeneratorConfig::default());
    let mut b = Generator::new(GeneratorConfig::default());
    for line in a.json_lines(50) {
        let mut x = Vec::new();
        b.write_json(&mut x);
        assert_eq!(line.as_bytes(), &x[..]);
    }
}
