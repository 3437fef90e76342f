//! Dealer geography: 150 dealers in 76 real US cities, weighted by metro
//! population (several per big metro), each with 3–12 salespeople, plus the
//! time zones needed for the local-time sales-intensity curve.
//!
//! The table is fixed (independent of the generator seed) so dealer ids,
//! cities and salesperson ids form a stable dimension.

/// US time zone of a dealer, as a fixed standard offset plus a DST flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeZone {
    /// America/New_York (UTC-5, DST)
    Eastern,
    /// America/Chicago (UTC-6, DST)
    Central,
    /// America/Denver (UTC-7, DST)
    Mountain,
    /// America/Phoenix (UTC-7, no DST)
    Arizona,
    /// America/Los_Angeles (UTC-8, DST)
    Pacific,
    /// America/Anchorage (UTC-9, DST)
    Alaska,
    /// Pacific/Honolulu (UTC-10, no DST)
    Hawaii,
}

impl TimeZone {
    /// All zones (index order used by the generator's tables).
    pub const ALL: [TimeZone; 7] = [
        Self::Eastern,
        Self::Central,
        Self::Mountain,
        Self::Arizona,
        Self::Pacific,
        Self::Alaska,
        Self::Hawaii,
    ];

    /// Standard-time offset from UTC in hours.
    pub const fn std_offset_hours(self) -> i64 {
        match self {
            Self::Eastern => -5,
            Self::Central => -6,
            Self::Mountain | Self::Arizona => -7,
            Self::Pacific => -8,
            Self::Alaska => -9,
            Self::Hawaii => -10,
        }
    }

    /// Whether the zone observes US daylight saving time.
    pub const fn observes_dst(self) -> bool {
        !matches!(self, Self::Arizona | Self::Hawaii)
    }

    /// Offset from UTC in hours, given whether US DST is in effect.
    pub const fn offset_hours(self, dst: bool) -> i64 {
        self.std_offset_hours() + if dst && self.observes_dst() { 1 } else { 0 }
    }

    /// IANA zone name.
    pub const fn iana(self) -> &'static str {
        match self {
            Self::Eastern => "America/New_York",
            Self::Central => "America/Chicago",
            Self::Mountain => "America/Denver",
            Self::Arizona => "America/Phoenix",
            Self::Pacific => "America/Los_Angeles",
            Self::Alaska => "America/Anchorage",
            Self::Hawaii => "Pacific/Honolulu",
        }
    }

    /// Position of the zone in [`TimeZone::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Self::Eastern => 0,
            Self::Central => 1,
            Self::Mountain => 2,
            Self::Arizona => 3,
            Self::Pacific => 4,
            Self::Alaska => 5,
            Self::Hawaii => 6,
        }
    }
}

/// A car dealership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dealer {
    /// Dealer id, `"D0001"` to `"D0150"`.
    pub id: &'static str,
    /// City name.
    pub city: &'static str,
    /// Two-letter state (or `"DC"`).
    pub state: &'static str,
    /// Local time zone.
    pub tz: TimeZone,
    /// Relative sales volume (proportional to metro population share).
    pub weight: u32,
    /// Number of salespeople (3–12); ids are `"{id}-S01"` to `"{id}-S{n:02}"`.
    pub salespeople: u8,
}

const fn d(
    id: &'static str,
    city: &'static str,
    state: &'static str,
    tz: TimeZone,
    weight: u32,
    salespeople: u8,
) -> Dealer {
    Dealer {
        id,
        city,
        state,
        tz,
        weight,
        salespeople,
    }
}

/// All dealers, ordered by id (`DEALERS[i].id == format!("D{:04}", i + 1)`).
#[rustfmt::skip]
pub static DEALERS: &[Dealer] = &[
    d("D0001", "New York", "NY", TimeZone::Eastern, 1555, 7),
    d("D0002", "New York", "NY", TimeZone::Eastern, 1590, 8),
    d("D0003", "New York", "NY", TimeZone::Eastern, 924, 7),
    d("D0004", "New York", "NY", TimeZone::Eastern, 1367, 6),
    d("D0005", "New York", "NY", TimeZone::Eastern, 1305, 6),
    d("D0006", "New York", "NY", TimeZone::Eastern, 1797, 10),
    d("D0007", "New York", "NY", TimeZone::Eastern, 1309, 7),
    d("D0008", "New York", "NY", TimeZone::Eastern, 1628, 9),
    d("D0009", "New York", "NY", TimeZone::Eastern, 1717, 9),
    d("D0010", "New York", "NY", TimeZone::Eastern, 812, 6),
    d("D0011", "New York", "NY", TimeZone::Eastern, 1207, 7),
    d("D0012", "New York", "NY", TimeZone::Eastern, 1573, 7),
    d("D0013", "New York", "NY", TimeZone::Eastern, 1837, 9),
    d("D0014", "New York", "NY", TimeZone::Eastern, 1346, 7),
    d("D0015", "Los Angeles", "CA", TimeZone::Pacific, 1534, 8),
    d("D0016", "Los Angeles", "CA", TimeZone::Pacific, 1304, 7),
    d("D0017", "Los Angeles", "CA", TimeZone::Pacific, 1496, 7),
    d("D0018", "Los Angeles", "CA", TimeZone::Pacific, 877, 7),
    d("D0019", "Los Angeles", "CA", TimeZone::Pacific, 1828, 9),
    d("D0020", "Los Angeles", "CA", TimeZone::Pacific, 1083, 5),
    d("D0021", "Los Angeles", "CA", TimeZone::Pacific, 820, 5),
    d("D0022", "Los Angeles", "CA", TimeZone::Pacific, 1894, 9),
    d("D0023", "Los Angeles", "CA", TimeZone::Pacific, 2076, 10),
    d("D0024", "Chicago", "IL", TimeZone::Central, 1617, 8),
    d("D0025", "Chicago", "IL", TimeZone::Central, 1572, 8),
    d("D0026", "Chicago", "IL", TimeZone::Central, 1746, 7),
    d("D0027", "Chicago", "IL", TimeZone::Central, 1516, 7),
    d("D0028", "Chicago", "IL", TimeZone::Central, 1480, 7),
    d("D0029", "Chicago", "IL", TimeZone::Central, 1704, 9),
    d("D0030", "Chicago", "IL", TimeZone::Central, 1607, 7),
    d("D0031", "Dallas", "TX", TimeZone::Central, 1878, 8),
    d("D0032", "Dallas", "TX", TimeZone::Central, 1981, 9),
    d("D0033", "Dallas", "TX", TimeZone::Central, 975, 7),
    d("D0034", "Dallas", "TX", TimeZone::Central, 1466, 7),
    d("D0035", "Dallas", "TX", TimeZone::Central, 1150, 6),
    d("D0036", "Dallas", "TX", TimeZone::Central, 1975, 9),
    d("D0037", "Houston", "TX", TimeZone::Central, 1995, 10),
    d("D0038", "Houston", "TX", TimeZone::Central, 2202, 11),
    d("D0039", "Houston", "TX", TimeZone::Central, 2034, 10),
    d("D0040", "Houston", "TX", TimeZone::Central, 1145, 7),
    d("D0041", "Houston", "TX", TimeZone::Central, 928, 6),
    d("D0042", "Atlanta", "GA", TimeZone::Eastern, 2034, 9),
    d("D0043", "Atlanta", "GA", TimeZone::Eastern, 2013, 10),
    d("D0044", "Atlanta", "GA", TimeZone::Eastern, 2412, 9),
    d("D0045", "Atlanta", "GA", TimeZone::Eastern, 2392, 12),
    d("D0046", "Washington", "DC", TimeZone::Eastern, 2016, 9),
    d("D0047", "Washington", "DC", TimeZone::Eastern, 1627, 7),
    d("D0048", "Washington", "DC", TimeZone::Eastern, 891, 6),
    d("D0049", "Washington", "DC", TimeZone::Eastern, 1040, 7),
    d("D0050", "Philadelphia", "PA", TimeZone::Eastern, 1985, 8),
    d("D0051", "Philadelphia", "PA", TimeZone::Eastern, 1421, 7),
    d("D0052", "Philadelphia", "PA", TimeZone::Eastern, 2364, 11),
    d("D0053", "Philadelphia", "PA", TimeZone::Eastern, 2066, 9),
    d("D0054", "Miami", "FL", TimeZone::Eastern, 1960, 9),
    d("D0055", "Miami", "FL", TimeZone::Eastern, 1494, 7),
    d("D0056", "Miami", "FL", TimeZone::Eastern, 1775, 9),
    d("D0057", "Miami", "FL", TimeZone::Eastern, 1161, 5),
    d("D0058", "Phoenix", "AZ", TimeZone::Arizona, 1770, 10),
    d("D0059", "Phoenix", "AZ", TimeZone::Arizona, 1935, 10),
    d("D0060", "Phoenix", "AZ", TimeZone::Arizona, 2177, 10),
    d("D0061", "Boston", "MA", TimeZone::Eastern, 1316, 7),
    d("D0062", "Boston", "MA", TimeZone::Eastern, 1219, 6),
    d("D0063", "Boston", "MA", TimeZone::Eastern, 1794, 9),
    d("D0064", "Riverside", "CA", TimeZone::Pacific, 2175, 9),
    d("D0065", "Riverside", "CA", TimeZone::Pacific, 1198, 7),
    d("D0066", "Riverside", "CA", TimeZone::Pacific, 1132, 7),
    d("D0067", "San Francisco", "CA", TimeZone::Pacific, 2219, 9),
    d("D0068", "San Francisco", "CA", TimeZone::Pacific, 874, 7),
    d("D0069", "San Francisco", "CA", TimeZone::Pacific, 1342, 7),
    d("D0070", "Detroit", "MI", TimeZone::Eastern, 1365, 7),
    d("D0071", "Detroit", "MI", TimeZone::Eastern, 1957, 8),
    d("D0072", "Detroit", "MI", TimeZone::Eastern, 1586, 7),
    d("D0073", "Seattle", "WA", TimeZone::Pacific, 1820, 8),
    d("D0074", "Seattle", "WA", TimeZone::Pacific, 1119, 7),
    d("D0075", "Seattle", "WA", TimeZone::Pacific, 1459, 8),
    d("D0076", "Minneapolis", "MN", TimeZone::Central, 2679, 11),
    d("D0077", "Minneapolis", "MN", TimeZone::Central, 1728, 10),
    d("D0078", "San Diego", "CA", TimeZone::Pacific, 1468, 7),
    d("D0079", "San Diego", "CA", TimeZone::Pacific, 1781, 8),
    d("D0080", "Tampa", "FL", TimeZone::Eastern, 2130, 9),
    d("D0081", "Tampa", "FL", TimeZone::Eastern, 1846, 10),
    d("D0082", "Denver", "CO", TimeZone::Mountain, 906, 6),
    d("D0083", "Denver", "CO", TimeZone::Mountain, 881, 6),
    d("D0084", "Baltimore", "MD", TimeZone::Eastern, 1904, 9),
    d("D0085", "Baltimore", "MD", TimeZone::Eastern, 1372, 8),
    d("D0086", "St. Louis", "MO", TimeZone::Central, 1925, 9),
    d("D0087", "St. Louis", "MO", TimeZone::Central, 2109, 10),
    d("D0088", "Orlando", "FL", TimeZone::Eastern, 1107, 5),
    d("D0089", "Orlando", "FL", TimeZone::Eastern, 1913, 10),
    d("D0090", "Charlotte", "NC", TimeZone::Eastern, 2080, 9),
    d("D0091", "Charlotte", "NC", TimeZone::Eastern, 2128, 10),
    d("D0092", "San Antonio", "TX", TimeZone::Central, 1572, 7),
    d("D0093", "San Antonio", "TX", TimeZone::Central, 2068, 9),
    d("D0094", "Portland", "OR", TimeZone::Pacific, 3776, 10),
    d("D0095", "Sacramento", "CA", TimeZone::Pacific, 3677, 11),
    d("D0096", "Pittsburgh", "PA", TimeZone::Eastern, 2241, 9),
    d("D0097", "Austin", "TX", TimeZone::Central, 2064, 10),
    d("D0098", "Las Vegas", "NV", TimeZone::Pacific, 3430, 10),
    d("D0099", "Cincinnati", "OH", TimeZone::Eastern, 1867, 10),
    d("D0100", "Kansas City", "MO", TimeZone::Central, 1512, 9),
    d("D0101", "Columbus", "OH", TimeZone::Eastern, 3006, 10),
    d("D0102", "Indianapolis", "IN", TimeZone::Eastern, 1297, 6),
    d("D0103", "Cleveland", "OH", TimeZone::Eastern, 1367, 6),
    d("D0104", "Nashville", "TN", TimeZone::Central, 1741, 9),
    d("D0105", "San Jose", "CA", TimeZone::Pacific, 2566, 10),
    d("D0106", "Virginia Beach", "VA", TimeZone::Eastern, 1232, 7),
    d("D0107", "Jacksonville", "FL", TimeZone::Eastern, 1167, 6),
    d("D0108", "Providence", "RI", TimeZone::Eastern, 2297, 11),
    d("D0109", "Milwaukee", "WI", TimeZone::Central, 2000, 8),
    d("D0110", "Raleigh", "NC", TimeZone::Eastern, 1672, 9),
    d("D0111", "Oklahoma City", "OK", TimeZone::Central, 2133, 9),
    d("D0112", "Memphis", "TN", TimeZone::Central, 651, 5),
    d("D0113", "Memphis", "TN", TimeZone::Central, 801, 5),
    d("D0114", "Richmond", "VA", TimeZone::Eastern, 618, 5),
    d("D0115", "Richmond", "VA", TimeZone::Eastern, 558, 6),
    d("D0116", "Louisville", "KY", TimeZone::Eastern, 913, 6),
    d("D0117", "Louisville", "KY", TimeZone::Eastern, 548, 5),
    d("D0118", "Salt Lake City", "UT", TimeZone::Mountain, 650, 4),
    d("D0119", "Salt Lake City", "UT", TimeZone::Mountain, 466, 5),
    d("D0120", "Buffalo", "NY", TimeZone::Eastern, 337, 5),
    d("D0121", "Buffalo", "NY", TimeZone::Eastern, 426, 4),
    d("D0122", "Hartford", "CT", TimeZone::Eastern, 775, 4),
    d("D0123", "Birmingham", "AL", TimeZone::Central, 1382, 8),
    d("D0124", "Tucson", "AZ", TimeZone::Arizona, 1506, 9),
    d("D0125", "New Orleans", "LA", TimeZone::Central, 1341, 6),
    d("D0126", "Tulsa", "OK", TimeZone::Central, 1254, 6),
    d("D0127", "Fresno", "CA", TimeZone::Pacific, 799, 4),
    d("D0128", "Omaha", "NE", TimeZone::Central, 1222, 7),
    d("D0129", "Honolulu", "HI", TimeZone::Hawaii, 1137, 6),
    d("D0130", "Albuquerque", "NM", TimeZone::Mountain, 923, 7),
    d("D0131", "Knoxville", "TN", TimeZone::Eastern, 995, 5),
    d("D0132", "El Paso", "TX", TimeZone::Mountain, 1084, 6),
    d("D0133", "Boise", "ID", TimeZone::Mountain, 452, 4),
    d("D0134", "Charleston", "SC", TimeZone::Eastern, 1166, 6),
    d("D0135", "Little Rock", "AR", TimeZone::Central, 827, 5),
    d("D0136", "Des Moines", "IA", TimeZone::Central, 568, 5),
    d("D0137", "Madison", "WI", TimeZone::Central, 656, 5),
    d("D0138", "Wichita", "KS", TimeZone::Central, 798, 6),
    d("D0139", "Jackson", "MS", TimeZone::Central, 441, 6),
    d("D0140", "Spokane", "WA", TimeZone::Pacific, 870, 4),
    d("D0141", "Portland", "ME", TimeZone::Eastern, 708, 6),
    d("D0142", "Wilmington", "DE", TimeZone::Eastern, 877, 5),
    d("D0143", "Manchester", "NH", TimeZone::Eastern, 511, 5),
    d("D0144", "Anchorage", "AK", TimeZone::Alaska, 383, 4),
    d("D0145", "Sioux Falls", "SD", TimeZone::Central, 252, 5),
    d("D0146", "Fargo", "ND", TimeZone::Central, 190, 6),
    d("D0147", "Burlington", "VT", TimeZone::Eastern, 182, 6),
    d("D0148", "Billings", "MT", TimeZone::Mountain, 131, 5),
    d("D0149", "Charleston", "WV", TimeZone::Eastern, 143, 4),
    d("D0150", "Cheyenne", "WY", TimeZone::Mountain, 152, 4),
];
