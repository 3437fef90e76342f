//! Sampling of one transaction's attributes (everything except the clock):
//! precomputed lookup tables shared by all generators and the [`Draw`]
//! record that both the owned and the fast JSON paths are built from.

use std::sync::OnceLock;

use super::calendar::{
    DAY_MS, civil_from_days, local_intensity, us_dst_bounds_ms, utc_hour_of_week,
};
use super::catalog::{BRANDS, Brand, COLORS, Condition, FuelType, Model, PaymentMethod, Status};
use super::dealers::{DEALERS, Dealer, TimeZone};
use super::record::{Price, RecordRef, Transaction};
use super::rng::{CumTable, Rng};

/// Model-year base for catalog MSRPs.
const MSRP_YEAR: i64 = 2025;
/// Yearly MSRP inflation used to deflate older model years.
const MSRP_INFLATION: f64 = 1.03;
/// Customer age bands `(min, max, weight %)`.
const AGE_BANDS: [(u16, u16, f64); 7] = [
    (18, 24, 7.0),
    (25, 34, 17.0),
    (35, 44, 19.0),
    (45, 54, 19.0),
    (55, 64, 19.0),
    (65, 74, 14.0),
    (75, 90, 5.0),
];
/// Share of transactions with an unknown customer age.
const AGE_NULL_SHARE: f64 = 0.04;
/// Age distribution (years 1..=15) of used cars, skewed young.
const USED_AGE_WEIGHTS: [f64; 15] = [
    6.0, 10.0, 12.0, 12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0,
];
/// Age distribution (years 1..=6) of certified pre-owned cars.
const CERTIFIED_AGE_WEIGHTS: [f64; 6] = [20.0, 25.0, 22.0, 16.0, 11.0, 6.0];
/// Chance by sale month that a new car is next year's model.
const NEXT_MODEL_YEAR_BY_MONTH: [f64; 12] = [
    0.02, 0.02, 0.02, 0.03, 0.03, 0.05, 0.12, 0.22, 0.32, 0.42, 0.48, 0.55,
];
/// Certified pre-owned odometer cap (about 80,000 miles).
const CERTIFIED_MAX_KM: f64 = 128_000.0;

/// Precomputed sampling tables (built once per process).
pub(crate) struct Tables {
    brand: CumTable,
    /// Per brand: model table.
    model: Vec<CumTable>,
    /// Per brand, per model: fuel-type table.
    fuel: Vec<Vec<CumTable>>,
    color: CumTable,
    condition: CumTable,
    status: CumTable,
    used_age: CumTable,
    certified_age: CumTable,
    /// Index: condition (new, used, certified) * 2 + luxury.
    payment: [CumTable; 6],
    age_band: CumTable,
    /// Per zone: dealer table and the dealer indices it maps to.
    zone_dealers: Vec<(CumTable, Vec<usize>)>,
    /// `[dst][utc hour of week]`: intensity relative to the weekly mean.
    pub(crate) rate: [[f64; 168]; 2],
    /// `dst * 168 + utc hour of week`: time-zone table.
    zone_at: Vec<CumTable>,
}

/// The process-wide tables.
pub(crate) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(Tables::build)
}

impl Tables {
    fn build() -> Self {
        let f = |x: f32| f64::from(x);
        let brand = CumTable::new(BRANDS.iter().map(|b| f(b.share)));
        let model = BRANDS
            .iter()
            .map(|b| CumTable::new(b.models.iter().map(|m| f(m.share))))
            .collect();
        let fuel = BRANDS
            .iter()
            .map(|b| {
                b.models
                    .iter()
                    .map(|m| CumTable::new(m.fuel_mix.iter().copied().map(f)))
                    .collect()
            })
            .collect();
        let pay = |cash: f64, loan: f64, lease: f64| CumTable::new([cash, loan, lease]);

        let zone_weight: Vec<f64> = TimeZone::ALL
            .iter()
            .map(|z| {
                DEALERS
                    .iter()
                    .filter(|d| d.tz == *z)
                    .map(|d| f64::from(d.weight))
                    .sum()
            })
            .collect();
        let zone_dealers = TimeZone::ALL
            .iter()
            .map(|z| {
                let idx: Vec<usize> = (0..DEALERS.len())
                    .filter(|&i| DEALERS[i].tz == *z)
                    .collect();
                let table = CumTable::new(idx.iter().map(|&i| f64::from(DEALERS[i].weight)));
                (table, idx)
            })
            .collect();

        let mut rate = [[0.0; 168]; 2];
        let mut zone_at = Vec::with_capacity(2 * 168);
        for (dst, row) in rate.iter_mut().enumerate() {
            for (how, slot) in row.iter_mut().enumerate() {
                let per_zone: Vec<f64> = TimeZone::ALL
                    .iter()
                    .zip(&zone_weight)
                    .map(|(z, w)| {
                        let local = (how as i64 + z.offset_hours(dst == 1)).rem_euclid(168);
                        w * local_intensity(local as usize)
                    })
                    .collect();
                *slot = per_zone.iter().sum();
                zone_at.push(CumTable::new(per_zone));
            }
            let mean = row.iter().sum::<f64>() / 168.0;
            if mean > 0.0 {
                row.iter_mut().for_each(|r| *r /= mean);
            }
        }

        Self {
            brand,
            model,
            fuel,
            color: CumTable::new(COLORS.iter().map(|c| f(c.share))),
            condition: CumTable::new(Condition::SHARES.iter().map(|s| s.1)),
            status: CumTable::new(Status::SHARES.iter().map(|s| s.1)),
            used_age: CumTable::new(USED_AGE_WEIGHTS),
            certified_age: CumTable::new(CERTIFIED_AGE_WEIGHTS),
            payment: [
                pay(0.15, 0.60, 0.25),
                pay(0.15, 0.40, 0.45),
                pay(0.28, 0.70, 0.02),
                pay(0.28, 0.70, 0.02),
                pay(0.20, 0.74, 0.06),
                pay(0.20, 0.74, 0.06),
            ],
            age_band: CumTable::new(AGE_BANDS.iter().map(|b| b.2)),
            zone_dealers,
            rate,
            zone_at,
        }
    }
}

/// Relative sales intensity at a UTC instant (weekly mean = 1.0): the
/// population-weighted sum of each dealer time zone's local
/// hour-of-day × day-of-week curve.
pub fn relative_intensity(utc_ms: i64) -> f64 {
    let (year, _, _) = civil_from_days(utc_ms.div_euclid(DAY_MS));
    let (start, end) = us_dst_bounds_ms(year);
    let dst = usize::from((start..end).contains(&utc_ms));
    tables().rate[dst][utc_hour_of_week(utc_ms)]
}

/// Fixed-capacity ASCII string (for ids built on the hot path).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InlineStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> InlineStr<N> {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len.min(N)]).unwrap_or("")
    }
}

/// One sampled transaction, borrowing static catalog data.
#[derive(Debug, Clone)]
pub(crate) struct Draw {
    transaction_id: InlineStr<36>,
    sold_at_ms: i64,
    dealer: &'static Dealer,
    brand: &'static Brand,
    model: &'static Model,
    model_year: u16,
    fuel: FuelType,
    color: &'static str,
    condition: Condition,
    mileage_km: u32,
    price: Price,
    payment: PaymentMethod,
    customer_age: Option<u16>,
    salesperson_id: InlineStr<16>,
    status: Status,
}

impl Draw {
    /// Borrowed view for the JSON writer.
    pub(crate) fn as_record(&self) -> RecordRef<'_> {
        RecordRef {
            transaction_id: self.transaction_id.as_str(),
            sold_at_ms: self.sold_at_ms,
            dealer_id: self.dealer.id,
            dealer_city: self.dealer.city,
            dealer_state: self.dealer.state,
            brand: self.brand.name,
            model: self.model.name,
            model_year: self.model_year,
            body_type: self.model.body.as_str(),
            fuel_type: self.fuel.as_str(),
            color: self.color,
            condition: self.condition.as_str(),
            mileage_km: self.mileage_km,
            price: self.price,
            currency: "USD",
            payment_method: self.payment.as_str(),
            customer_age: self.customer_age,
            salesperson_id: self.salesperson_id.as_str(),
            status: self.status.as_str(),
        }
    }

    /// Owned record.
    pub(crate) fn to_transaction(&self) -> Transaction {
        let r = self.as_record();
        Transaction {
            transaction_id: r.transaction_id.to_owned(),
            sold_at: chrono::DateTime::from_timestamp_millis(r.sold_at_ms).unwrap_or_default(),
            dealer_id: r.dealer_id.to_owned(),
            dealer_city: r.dealer_city.to_owned(),
            dealer_state: r.dealer_state.to_owned(),
            brand: r.brand.to_owned(),
            model: r.model.to_owned(),
            model_year: r.model_year,
            body_type: r.body_type.to_owned(),
            fuel_type: r.fuel_type.to_owned(),
            color: r.color.to_owned(),
            condition: r.condition.to_owned(),
            mileage_km: r.mileage_km,
            price: r.price,
            currency: r.currency.to_owned(),
            payment_method: r.payment_method.to_owned(),
            customer_age: r.customer_age,
            salesperson_id: r.salesperson_id.to_owned(),
            status: r.status.to_owned(),
        }
    }
}

/// Formats 128 random bits as a lowercase RFC 4122 version-4 UUID.
fn uuid_v4(hi: u64, lo: u64) -> InlineStr<36> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    let mut buf = [b'-'; 36];
    let mut pos = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            pos += 1;
        }
        buf[pos] = HEX[usize::from(b >> 4)];
        buf[pos + 1] = HEX[usize::from(b & 0xF)];
        pos += 2;
    }
    InlineStr { buf, len: 36 }
}

/// `"{dealer_id}-S{n:02}"`.
fn salesperson_id(dealer_id: &str, n: u8) -> InlineStr<16> {
    let mut buf = [0u8; 16];
    let id = dealer_id.as_bytes();
    let len = id.len().min(11);
    buf[..len].copy_from_slice(&id[..len]);
    buf[len] = b'-';
    buf[len + 1] = b'S';
    buf[len + 2] = b'0' + (n / 10) % 10;
    buf[len + 3] = b'0' + n % 10;
    InlineStr { buf, len: len + 4 }
}

/// Rounds a dollar amount to a dealer-style price in cents.
fn dealer_price_cents(rng: &mut Rng, dollars: f64) -> i64 {
    let style = rng.next_f64();
    let d = dollars.max(1_500.0);
    let cents = if style < 0.55 {
        (d / 50.0).round() * 5_000.0 // 28450.00
    } else if style < 0.80 {
        (d / 100.0).round() * 10_000.0 - 100.0 // 28499.00
    } else if style < 0.90 {
        (d / 100.0).round() * 10_000.0 - 1.0 // 28499.99
    } else {
        (d * 100.0).round() // negotiated: 28473.62
    };
    cents as i64
}

/// Samples all attributes of one transaction. Everything but `sold_at`
/// derives from the generator clock `clock_ms` (so jitter changes nothing
/// else); `zone_slot` is `dst * 168 + utc hour of week` of the clock (it
/// picks the dealer time zone, so sales follow local business hours).
pub(crate) fn draw(rng: &mut Rng, clock_ms: i64, sold_at_ms: i64, zone_slot: usize) -> Draw {
    let t = tables();

    let transaction_id = uuid_v4(rng.next_u64(), rng.next_u64());

    // Dealer: time zone by local-time intensity, then by dealer size.
    let zone_r = rng.next_u32();
    let zone = t.zone_at.get(zone_slot).map_or(0, |z| z.index_of(zone_r));
    let dealer_r = rng.next_u32();
    let dealer_idx = t
        .zone_dealers
        .get(zone)
        .and_then(|(table, idx)| idx.get(table.index_of(dealer_r)).copied())
        .unwrap_or(0);
    let dealer = DEALERS.get(dealer_idx).unwrap_or(&DEALERS[0]);
    let sp = rng.range_u64(1, u64::from(dealer.salespeople.max(1))) as u8;
    let salesperson_id = salesperson_id(dealer.id, sp);

    // Vehicle.
    let b = rng.pick(&t.brand);
    let brand = BRANDS.get(b).unwrap_or(&BRANDS[0]);
    let mi = t.model.get(b).map_or(0, |m| rng.pick(m));
    let model = brand.models.get(mi).unwrap_or(&brand.models[0]);
    let fuel_r = rng.next_u32();
    let fuel_i = t
        .fuel
        .get(b)
        .and_then(|f| f.get(mi))
        .map_or(0, |f| f.index_of(fuel_r));
    let fuel = FuelType::ALL[fuel_i.min(4)];
    let color = COLORS.get(rng.pick(&t.color)).map_or("white", |c| c.name);
    let condition = match rng.pick(&t.condition) {
        0 => Condition::New,
        1 => Condition::Used,
        _ => Condition::Certified,
    };

    // Model year and mileage.
    let (year, month, _) = civil_from_days(clock_ms.div_euclid(DAY_MS));
    let month_idx = (month.clamp(1, 12) - 1) as usize;
    let model_year = match condition {
        Condition::New => year + i64::from(rng.next_f64() < NEXT_MODEL_YEAR_BY_MONTH[month_idx]),
        Condition::Used => year - 1 - rng.pick(&t.used_age) as i64,
        Condition::Certified => year - 1 - rng.pick(&t.certified_age) as i64,
    };
    let model_year = model_year.max(i64::from(model.first_year)).clamp(0, 9999);
    let years = ((year - model_year) as f64 - 0.5 + (month_idx as f64 + 0.5) / 12.0).max(0.25);
    let (mileage, expected) = match condition {
        Condition::New => {
            let u = rng.next_f64();
            ((u * u * 50.0).floor(), 1.0)
        }
        Condition::Used | Condition::Certified => {
            let annual = 15_000.0 + 5_000.0 * rng.next_f64();
            let noise = 0.75 + 0.5 * rng.next_f64();
            let mut km = years * annual * noise;
            if condition == Condition::Certified {
                km = km.min(CERTIFIED_MAX_KM * (0.9 + 0.1 * rng.next_f64()));
            }
            (km.round(), years * 17_500.0)
        }
    };

    // Price: MSRP (deflated to the model year) × trim × fuel premium × noise,
    // then depreciation and mileage adjustment for used cars.
    let fuel_factor = match fuel {
        FuelType::Gasoline => 1.0,
        FuelType::Hybrid => 1.07,
        FuelType::PlugInHybrid => 1.18,
        FuelType::Diesel => 1.10,
        // EV variant of a mostly-combustion model (e.g. F-150 Lightning).
        FuelType::Electric if model.fuel_mix[2] < 0.5 => 1.25,
        FuelType::Electric => 1.0,
    };
    let inflation = MSRP_INFLATION.powi((model_year - MSRP_YEAR).clamp(-60, 10) as i32);
    let trim_u = rng.next_f64();
    let trim = 1.0 + 0.35 * trim_u * trim_u.sqrt();
    let noise = 0.92 + 0.16 * rng.next_f64();
    let mut value = f64::from(model.msrp_usd) * inflation * fuel_factor * trim * noise;
    if condition != Condition::New {
        // About -15% in the first year, then -10% a year.
        let depreciation = if years <= 1.0 {
            1.0 - 0.15 * years
        } else {
            0.85 * 0.90f64.powf(years - 1.0)
        };
        let mileage_adj = (1.0 - 0.12 * (mileage / expected - 1.0)).clamp(0.85, 1.10);
        value *= depreciation * mileage_adj;
        if condition == Condition::Certified {
            value *= 1.07;
        }
    }
    let price = Price(dealer_price_cents(rng, value));

    // Deal.
    let pay_slot = match condition {
        Condition::New => 0,
        Condition::Used => 2,
        Condition::Certified => 4,
    } + usize::from(brand.luxury);
    let payment = match t.payment.get(pay_slot).map_or(1, |p| rng.pick(p)) {
        0 => PaymentMethod::Cash,
        1 => PaymentMethod::Loan,
        _ => PaymentMethod::Lease,
    };
    let customer_age = if rng.next_f64() < AGE_NULL_SHARE {
        None
    } else {
        let (lo, hi, _) = AGE_BANDS[rng.pick(&t.age_band).min(AGE_BANDS.len() - 1)];
        Some(rng.range_u64(u64::from(lo), u64::from(hi)) as u16)
    };
    let status = match rng.pick(&t.status) {
        0 => Status::Completed,
        1 => Status::Cancelled,
        _ => Status::Refunded,
    };

    Draw {
        transaction_id,
        sold_at_ms,
        dealer,
        brand,
        model,
        model_year: model_year as u16,
        fuel,
        color,
        condition,
        mileage_km: mileage.clamp(0.0, f64::from(u32::MAX)) as u32,
        price,
        payment,
        customer_age,
        salesperson_id,
        status,
    }
}
