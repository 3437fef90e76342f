//! Static reference data for the generator: brands and models (with US
//! market shares, base MSRP, body and fuel-type mix), colors, and the
//! category enums used in a transaction.
//!
//! Shares are approximate 2024/2025 US new-vehicle market shares; they only
//! need to *look* realistic. Dealers live in [`super::dealers`].

use serde::{Deserialize, Serialize};

/// Vehicle body style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    /// `"sedan"`
    Sedan,
    /// `"suv"`
    Suv,
    /// `"pickup"`
    Pickup,
    /// `"hatchback"`
    Hatchback,
    /// `"coupe"`
    Coupe,
    /// `"van"`
    Van,
    /// `"wagon"`
    Wagon,
    /// `"convertible"`
    Convertible,
}

impl BodyType {
    /// All body types.
    pub const ALL: [BodyType; 8] = [
        Self::Sedan,
        Self::Suv,
        Self::Pickup,
        Self::Hatchback,
        Self::Coupe,
        Self::Van,
        Self::Wagon,
        Self::Convertible,
    ];

    /// Wire name, as in the JSON record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sedan => "sedan",
            Self::Suv => "suv",
            Self::Pickup => "pickup",
            Self::Hatchback => "hatchback",
            Self::Coupe => "coupe",
            Self::Van => "van",
            Self::Wagon => "wagon",
            Self::Convertible => "convertible",
        }
    }
}

/// Powertrain fuel type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FuelType {
    /// `"gasoline"`
    #[serde(rename = "gasoline")]
    Gasoline,
    /// `"hybrid"`
    #[serde(rename = "hybrid")]
    Hybrid,
    /// `"electric"`
    #[serde(rename = "electric")]
    Electric,
    /// `"diesel"`
    #[serde(rename = "diesel")]
    Diesel,
    /// `"plug-in hybrid"`
    #[serde(rename = "plug-in hybrid")]
    PlugInHybrid,
}

impl FuelType {
    /// All fuel types, in the order used by [`Model::fuel_mix`].
    pub const ALL: [FuelType; 5] = [
        Self::Gasoline,
        Self::Hybrid,
        Self::Electric,
        Self::Diesel,
        Self::PlugInHybrid,
    ];

    /// Wire name, as in the JSON record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gasoline => "gasoline",
            Self::Hybrid => "hybrid",
            Self::Electric => "electric",
            Self::Diesel => "diesel",
            Self::PlugInHybrid => "plug-in hybrid",
        }
    }
}

/// Vehicle condition at sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// `"new"` (about 55% of sales)
    New,
    /// `"used"` (about 38%)
    Used,
    /// `"certified"` pre-owned (about 7%)
    Certified,
}

impl Condition {
    /// All conditions with their share of sales.
    pub const SHARES: [(Condition, f64); 3] = [
        (Self::New, 0.55),
        (Self::Used, 0.38),
        (Self::Certified, 0.07),
    ];

    /// Wire name, as in the JSON record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Used => "used",
            Self::Certified => "certified",
        }
    }
}

/// How the customer paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentMethod {
    /// `"cash"`
    Cash,
    /// `"loan"`
    Loan,
    /// `"lease"` (mostly new cars)
    Lease,
}

impl PaymentMethod {
    /// All payment methods.
    pub const ALL: [PaymentMethod; 3] = [Self::Cash, Self::Loan, Self::Lease];

    /// Wire name, as in the JSON record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cash => "cash",
            Self::Loan => "loan",
            Self::Lease => "lease",
        }
    }
}

/// Final state of the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `"completed"` (about 94%)
    Completed,
    /// `"cancelled"` (about 4%)
    Cancelled,
    /// `"refunded"` (about 2%)
    Refunded,
}

impl Status {
    /// All statuses with their share of transactions.
    pub const SHARES: [(Status, f64); 3] = [
        (Self::Completed, 0.94),
        (Self::Cancelled, 0.04),
        (Self::Refunded, 0.02),
    ];

    /// Wire name, as in the JSON record.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }
}

/// A car model sold by a [`Brand`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    /// Model name, e.g. `"RAV4"`.
    pub name: &'static str,
    /// Body style.
    pub body: BodyType,
    /// Base MSRP in whole US dollars for the 2025 model year.
    pub msrp_usd: u32,
    /// Relative share of the brand's sales.
    pub share: f32,
    /// Relative weights of each fuel type, in [`FuelType::ALL`] order.
    pub fuel_mix: [f32; 5],
    /// First model year the nameplate existed (older used cars are clamped).
    pub first_year: u16,
}

/// A car brand with its models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Brand {
    /// Brand name, e.g. `"Toyota"`.
    pub name: &'static str,
    /// Approximate US market share in percent.
    pub share: f32,
    /// Premium brand (more leases, slightly older buyers are not modelled).
    pub luxury: bool,
    /// The brand's models (3 to 6).
    pub models: &'static [Model],
}

/// A paint color and its share of sales.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Color {
    /// Color name, e.g. `"white"`.
    pub name: &'static str,
    /// Share of sales in percent.
    pub share: f32,
}

const G: [f32; 5] = [1.0, 0.0, 0.0, 0.0, 0.0];
const EV: [f32; 5] = [0.0, 0.0, 1.0, 0.0, 0.0];

/// Fuel mix: gasoline, hybrid, electric, diesel, plug-in hybrid.
const fn mix(g: f32, h: f32, e: f32, d: f32, p: f32) -> [f32; 5] {
    [g, h, e, d, p]
}

const fn m(
    name: &'static str,
    body: BodyType,
    msrp_usd: u32,
    share: f32,
    fuel_mix: [f32; 5],
    first_year: u16,
) -> Model {
    Model {
        name,
        body,
        msrp_usd,
        share,
        fuel_mix,
        first_year,
    }
}

const fn b(name: &'static str, share: f32, luxury: bool, models: &'static [Model]) -> Brand {
    Brand {
        name,
        share,
        luxury,
        models,
    }
}

use BodyType::{Convertible, Coupe, Hatchback, Pickup, Sedan, Suv, Van, Wagon};

/// Brands with approximate US market shares (percent) and their models.
#[rustfmt::skip]
pub static BRANDS: &[Brand] = &[
    b("Toyota", 14.5, false, &[
        m("RAV4", Suv, 30_000, 30.0, mix(0.55, 0.40, 0.0, 0.0, 0.05), 1996),
        m("Camry", Sedan, 29_000, 20.0, mix(0.35, 0.65, 0.0, 0.0, 0.0), 1983),
        m("Corolla", Sedan, 23_000, 17.0, mix(0.80, 0.20, 0.0, 0.0, 0.0), 1968),
        m("Tacoma", Pickup, 33_000, 13.0, mix(0.90, 0.10, 0.0, 0.0, 0.0), 1995),
        m("Highlander", Suv, 40_000, 11.0, mix(0.70, 0.30, 0.0, 0.0, 0.0), 2001),
        m("Tundra", Pickup, 42_000, 9.0, mix(0.85, 0.15, 0.0, 0.0, 0.0), 2000),
    ]),
    b("Ford", 12.8, false, &[
        m("F-150", Pickup, 38_000, 45.0, mix(0.85, 0.07, 0.04, 0.04, 0.0), 1975),
        m("Explorer", Suv, 39_000, 14.0, G, 1991),
        m("Escape", Suv, 30_000, 12.0, mix(0.75, 0.20, 0.0, 0.0, 0.05), 2001),
        m("Bronco", Suv, 40_000, 12.0, G, 2021),
        m("Maverick", Pickup, 25_000, 12.0, mix(0.50, 0.50, 0.0, 0.0, 0.0), 2022),
        m("Mustang", Coupe, 32_000, 5.0, G, 1965),
    ]),
    b("Chevrolet", 10.5, false, &[
        m("Silverado 1500", Pickup, 40_000, 38.0, mix(0.90, 0.0, 0.03, 0.07, 0.0), 1999),
        m("Equinox", Suv, 28_000, 19.0, mix(0.90, 0.0, 0.10, 0.0, 0.0), 2005),
        m("Trax", Suv, 21_000, 15.0, G, 2015),
        m("Tahoe", Suv, 58_000, 10.0, mix(0.95, 0.0, 0.0, 0.05, 0.0), 1995),
        m("Colorado", Pickup, 31_000, 9.0, G, 2004),
        m("Malibu", Sedan, 25_000, 9.0, G, 1997),
    ]),
    b("Honda", 8.4, false, &[
        m("CR-V", Suv, 31_000, 36.0, mix(0.60, 0.40, 0.0, 0.0, 0.0), 1997),
        m("Civic", Sedan, 25_000, 25.0, mix(0.80, 0.20, 0.0, 0.0, 0.0), 1973),
        m("Accord", Sedan, 29_000, 15.0, mix(0.50, 0.50, 0.0, 0.0, 0.0), 1976),
        m("HR-V", Suv, 26_000, 11.0, G, 2016),
        m("Pilot", Suv, 40_000, 8.0, G, 2003),
        m("Odyssey", Van, 39_000, 5.0, G, 1995),
    ]),
    b("Nissan", 5.8, false, &[
        m("Rogue", Suv, 30_000, 35.0, G, 2008),
        m("Sentra", Sedan, 21_000, 22.0, G, 1982),
        m("Altima", Sedan, 27_000, 15.0, G, 1993),
        m("Kicks", Suv, 22_000, 10.0, G, 2018),
        m("Pathfinder", Suv, 37_000, 9.0, G, 1987),
        m("Frontier", Pickup, 32_000, 9.0, G, 1998),
    ]),
    b("Hyundai", 5.2, false, &[
        m("Tucson", Suv, 29_000, 30.0, mix(0.75, 0.20, 0.0, 0.0, 0.05), 2005),
        m("Elantra", Sedan, 22_000, 25.0, mix(0.85, 0.15, 0.0, 0.0, 0.0), 1991),
        m("Santa Fe", Suv, 34_000, 18.0, mix(0.70, 0.30, 0.0, 0.0, 0.0), 2001),
        m("Palisade", Suv, 38_000, 12.0, G, 2020),
        m("Kona", Suv, 25_000, 10.0, mix(0.85, 0.0, 0.15, 0.0, 0.0), 2018),
        m("Ioniq 5", Suv, 43_000, 5.0, EV, 2022),
    ]),
    b("Kia", 5.0, false, &[
        m("Sportage", Suv, 28_000, 28.0, mix(0.75, 0.20, 0.0, 0.0, 0.05), 1995),
        m("Forte", Sedan, 21_000, 20.0, G, 2010),
        m("Telluride", Suv, 37_000, 18.0, G, 2020),
        m("Sorento", Suv, 32_000, 16.0, mix(0.75, 0.20, 0.0, 0.0, 0.05), 2003),
        m("Carnival", Van, 36_000, 9.0, mix(0.90, 0.10, 0.0, 0.0, 0.0), 2022),
        m("Soul", Hatchback, 21_000, 9.0, G, 2010),
    ]),
    b("Jeep", 4.0, false, &[
        m("Grand Cherokee", Suv, 40_000, 40.0, mix(0.85, 0.0, 0.0, 0.0, 0.15), 1993),
        m("Wrangler", Suv, 33_000, 30.0, mix(0.80, 0.0, 0.0, 0.0, 0.20), 1987),
        m("Compass", Suv, 28_000, 18.0, G, 2007),
        m("Gladiator", Pickup, 40_000, 8.0, G, 2020),
        m("Wagoneer", Suv, 63_000, 4.0, G, 2022),
    ]),
    b("Subaru", 4.0, false, &[
        m("Crosstrek", Suv, 26_000, 30.0, mix(0.90, 0.10, 0.0, 0.0, 0.0), 2013),
        m("Forester", Suv, 30_000, 30.0, mix(0.85, 0.15, 0.0, 0.0, 0.0), 1998),
        m("Outback", Wagon, 30_000, 28.0, G, 1995),
        m("Ascent", Suv, 37_000, 7.0, G, 2019),
        m("Impreza", Hatchback, 23_000, 5.0, G, 1993),
    ]),
    b("GMC", 3.8, false, &[
        m("Sierra 1500", Pickup, 45_000, 45.0, mix(0.92, 0.0, 0.02, 0.06, 0.0), 1999),
        m("Sierra 2500HD", Pickup, 50_000, 15.0, mix(0.55, 0.0, 0.0, 0.45, 0.0), 2001),
        m("Yukon", Suv, 62_000, 13.0, mix(0.95, 0.0, 0.0, 0.05, 0.0), 1992),
        m("Acadia", Suv, 43_000, 12.0, G, 2007),
        m("Terrain", Suv, 32_000, 12.0, G, 2010),
        m("Canyon", Pickup, 38_000, 8.0, G, 2004),
    ]),
    b("Tesla", 3.8, false, &[
        m("Model Y", Suv, 45_000, 55.0, EV, 2020),
        m("Model 3", Sedan, 40_000, 33.0, EV, 2017),
        m("Model S", Sedan, 75_000, 4.0, EV, 2012),
        m("Model X", Suv, 80_000, 4.0, EV, 2016),
        m("Cybertruck", Pickup, 80_000, 4.0, EV, 2024),
    ]),
    b("Ram", 3.0, false, &[
        m("1500", Pickup, 42_000, 65.0, mix(0.92, 0.0, 0.0, 0.08, 0.0), 2011),
        m("2500", Pickup, 47_000, 22.0, mix(0.60, 0.0, 0.0, 0.40, 0.0), 2011),
        m("3500", Pickup, 50_000, 8.0, mix(0.50, 0.0, 0.0, 0.50, 0.0), 2011),
        m("ProMaster", Van, 46_000, 5.0, G, 2014),
    ]),
    b("Mazda", 2.6, false, &[
        m("CX-5", Suv, 30_000, 40.0, G, 2013),
        m("CX-50", Suv, 32_000, 20.0, mix(0.85, 0.15, 0.0, 0.0, 0.0), 2023),
        m("CX-30", Suv, 26_000, 18.0, G, 2020),
        m("Mazda3", Sedan, 24_000, 12.0, G, 2004),
        m("CX-90", Suv, 40_000, 7.0, mix(0.80, 0.0, 0.0, 0.0, 0.20), 2024),
        m("MX-5 Miata", Convertible, 30_000, 3.0, G, 1990),
    ]),
    b("BMW", 2.4, true, &[
        m("X3", Suv, 49_000, 28.0, G, 2004),
        m("X5", Suv, 66_000, 27.0, mix(0.85, 0.0, 0.0, 0.0, 0.15), 2000),
        m("3 Series", Sedan, 46_000, 20.0, mix(0.85, 0.0, 0.0, 0.0, 0.15), 1977),
        m("5 Series", Sedan, 58_000, 12.0, G, 1975),
        m("4 Series", Convertible, 60_000, 7.0, G, 2014),
        m("i4", Sedan, 53_000, 6.0, EV, 2022),
    ]),
    b("Lexus", 2.4, true, &[
        m("RX", Suv, 50_000, 35.0, mix(0.55, 0.45, 0.0, 0.0, 0.0), 1999),
        m("NX", Suv, 43_000, 25.0, mix(0.50, 0.40, 0.0, 0.0, 0.10), 2015),
        m("ES", Sedan, 43_000, 17.0, mix(0.50, 0.50, 0.0, 0.0, 0.0), 1990),
        m("TX", Suv, 56_000, 10.0, mix(0.80, 0.10, 0.0, 0.0, 0.10), 2024),
        m("GX", Suv, 66_000, 8.0, G, 2003),
        m("IS", Sedan, 41_000, 5.0, G, 2001),
    ]),
    b("Mercedes-Benz", 2.3, true, &[
        m("GLC", Suv, 49_000, 30.0, G, 2016),
        m("GLE", Suv, 63_000, 22.0, mix(0.90, 0.0, 0.0, 0.0, 0.10), 2016),
        m("C-Class", Sedan, 48_000, 18.0, G, 1994),
        m("E-Class", Sedan, 63_000, 12.0, G, 1994),
        m("GLA", Suv, 44_000, 10.0, G, 2015),
        m("Sprinter", Van, 55_000, 8.0, mix(0.30, 0.0, 0.0, 0.70, 0.0), 2003),
    ]),
    b("Volkswagen", 2.3, false, &[
        m("Tiguan", Suv, 30_000, 35.0, G, 2009),
        m("Atlas", Suv, 39_000, 25.0, G, 2018),
        m("Jetta", Sedan, 23_000, 22.0, G, 1980),
        m("Taos", Suv, 25_000, 10.0, G, 2022),
        m("ID.4", Suv, 41_000, 5.0, EV, 2021),
        m("Golf GTI", Hatchback, 33_000, 3.0, G, 1983),
    ]),
    b("Audi", 1.4, true, &[
        m("Q5", Suv, 47_000, 38.0, mix(0.90, 0.0, 0.0, 0.0, 0.10), 2009),
        m("Q3", Suv, 40_000, 15.0, G, 2015),
        m("Q7", Suv, 60_000, 15.0, G, 2007),
        m("A4", Sedan, 43_000, 14.0, G, 1996),
        m("Q4 e-tron", Suv, 52_000, 10.0, EV, 2022),
        m("A6", Sedan, 58_000, 8.0, G, 1995),
    ]),
    b("Buick", 1.2, false, &[
        m("Encore GX", Suv, 27_000, 35.0, G, 2020),
        m("Envista", Suv, 24_000, 30.0, G, 2024),
        m("Enclave", Suv, 46_000, 20.0, G, 2008),
        m("Envision", Suv, 37_000, 15.0, G, 2016),
    ]),
    b("Dodge", 1.0, false, &[
        m("Durango", Suv, 40_000, 45.0, G, 1998),
        m("Charger", Sedan, 35_000, 35.0, G, 2006),
        m("Challenger", Coupe, 33_000, 15.0, G, 2008),
        m("Hornet", Suv, 31_000, 5.0, mix(0.80, 0.0, 0.0, 0.0, 0.20), 2023),
    ]),
    b("Cadillac", 1.0, true, &[
        m("Escalade", Suv, 88_000, 30.0, mix(0.95, 0.0, 0.0, 0.05, 0.0), 1999),
        m("XT5", Suv, 47_000, 20.0, G, 2017),
        m("Lyriq", Suv, 59_000, 20.0, EV, 2023),
        m("XT4", Suv, 38_000, 15.0, G, 2019),
        m("CT5", Sedan, 48_000, 15.0, G, 2020),
    ]),
    b("Acura", 0.9, true, &[
        m("RDX", Suv, 45_000, 40.0, G, 2007),
        m("MDX", Suv, 51_000, 35.0, G, 2001),
        m("Integra", Hatchback, 33_000, 20.0, G, 2023),
        m("TLX", Sedan, 45_000, 5.0, G, 2015),
    ]),
];

/// Paint colors with their approximate share of US sales (percent).
#[rustfmt::skip]
pub static COLORS: &[Color] = &[
    Color { name: "white", share: 25.0 },
    Color { name: "black", share: 22.0 },
    Color { name: "gray", share: 19.0 },
    Color { name: "silver", share: 10.0 },
    Color { name: "blue", share: 9.0 },
    Color { name: "red", share: 8.0 },
    Color { name: "green", share: 2.5 },
    Color { name: "brown", share: 1.5 },
    Color { name: "beige", share: 1.0 },
    Color { name: "orange", share: 1.0 },
    Color { name: "yellow", share: 0.5 },
    Color { name: "gold", share: 0.5 },
];

/// Total number of models across all brands.
pub fn model_count() -> usize {
    BRANDS.iter().map(|b| b.models.len()).sum()
}
