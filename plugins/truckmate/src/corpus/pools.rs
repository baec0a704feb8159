//! Slot pools: the real-world values TruckMate utterances talk about, with the ways a driver
//! says them. Each entry is `(canonical slot value, spoken variants)` unless noted.

/// US cities with their state's postal code (lower case).
pub const CITIES: &[(&str, &str)] = &[
    ("dallas", "tx"),
    ("houston", "tx"),
    ("san antonio", "tx"),
    ("austin", "tx"),
    ("el paso", "tx"),
    ("fort worth", "tx"),
    ("amarillo", "tx"),
    ("laredo", "tx"),
    ("lubbock", "tx"),
    ("odessa", "tx"),
    ("abilene", "tx"),
    ("waco", "tx"),
    ("oklahoma city", "ok"),
    ("tulsa", "ok"),
    ("wichita", "ks"),
    ("kansas city", "mo"),
    ("st louis", "mo"),
    ("springfield", "mo"),
    ("joplin", "mo"),
    ("omaha", "ne"),
    ("lincoln", "ne"),
    ("north platte", "ne"),
    ("des moines", "ia"),
    ("davenport", "ia"),
    ("sioux falls", "sd"),
    ("rapid city", "sd"),
    ("fargo", "nd"),
    ("bismarck", "nd"),
    ("minneapolis", "mn"),
    ("duluth", "mn"),
    ("milwaukee", "wi"),
    ("madison", "wi"),
    ("green bay", "wi"),
    ("chicago", "il"),
    ("peoria", "il"),
    ("rockford", "il"),
    ("indianapolis", "in"),
    ("fort wayne", "in"),
    ("gary", "in"),
    ("detroit", "mi"),
    ("grand rapids", "mi"),
    ("lansing", "mi"),
    ("columbus", "oh"),
    ("cleveland", "oh"),
    ("cincinnati", "oh"),
    ("toledo", "oh"),
    ("dayton", "oh"),
    ("louisville", "ky"),
    ("lexington", "ky"),
    ("bowling green", "ky"),
    ("nashville", "tn"),
    ("memphis", "tn"),
    ("knoxville", "tn"),
    ("chattanooga", "tn"),
    ("atlanta", "ga"),
    ("savannah", "ga"),
    ("macon", "ga"),
    ("valdosta", "ga"),
    ("birmingham", "al"),
    ("montgomery", "al"),
    ("mobile", "al"),
    ("huntsville", "al"),
    ("jackson", "ms"),
    ("meridian", "ms"),
    ("new orleans", "la"),
    ("baton rouge", "la"),
    ("shreveport", "la"),
    ("lafayette", "la"),
    ("little rock", "ar"),
    ("fort smith", "ar"),
    ("texarkana", "ar"),
    ("jacksonville", "fl"),
    ("miami", "fl"),
    ("orlando", "fl"),
    ("tampa", "fl"),
    ("tallahassee", "fl"),
    ("pensacola", "fl"),
    ("charlotte", "nc"),
    ("raleigh", "nc"),
    ("greensboro", "nc"),
    ("columbia", "sc"),
    ("charleston", "sc"),
    ("greenville", "sc"),
    ("richmond", "va"),
    ("norfolk", "va"),
    ("roanoke", "va"),
    ("baltimore", "md"),
    ("hagerstown", "md"),
    ("harrisburg", "pa"),
    ("pittsburgh", "pa"),
    ("philadelphia", "pa"),
    ("scranton", "pa"),
    ("allentown", "pa"),
    ("newark", "nj"),
    ("trenton", "nj"),
    ("albany", "ny"),
    ("buffalo", "ny"),
    ("syracuse", "ny"),
    ("rochester", "ny"),
    ("hartford", "ct"),
    ("boston", "ma"),
    ("worcester", "ma"),
    ("portland", "me"),
    ("bangor", "me"),
    ("manchester", "nh"),
    ("burlington", "vt"),
    ("denver", "co"),
    ("pueblo", "co"),
    ("grand junction", "co"),
    ("cheyenne", "wy"),
    ("casper", "wy"),
    ("billings", "mt"),
    ("missoula", "mt"),
    ("butte", "mt"),
    ("boise", "id"),
    ("pocatello", "id"),
    ("salt lake city", "ut"),
    ("ogden", "ut"),
    ("st george", "ut"),
    ("las vegas", "nv"),
    ("reno", "nv"),
    ("elko", "nv"),
    ("phoenix", "az"),
    ("tucson", "az"),
    ("flagstaff", "az"),
    ("kingman", "az"),
    ("albuquerque", "nm"),
    ("las cruces", "nm"),
    ("gallup", "nm"),
    ("los angeles", "ca"),
    ("san diego", "ca"),
    ("fresno", "ca"),
    ("bakersfield", "ca"),
    ("sacramento", "ca"),
    ("stockton", "ca"),
    ("barstow", "ca"),
    ("ontario", "ca"),
    ("redding", "ca"),
    ("portland", "or"),
    ("medford", "or"),
    ("eugene", "or"),
    ("seattle", "wa"),
    ("spokane", "wa"),
    ("tacoma", "wa"),
    ("yakima", "wa"),
];

/// Postal code to spoken state name.
pub const STATES: &[(&str, &str)] = &[
    ("al", "alabama"),
    ("ar", "arkansas"),
    ("az", "arizona"),
    ("ca", "california"),
    ("co", "colorado"),
    ("ct", "connecticut"),
    ("fl", "florida"),
    ("ga", "georgia"),
    ("ia", "iowa"),
    ("id", "idaho"),
    ("il", "illinois"),
    ("in", "indiana"),
    ("ks", "kansas"),
    ("ky", "kentucky"),
    ("la", "louisiana"),
    ("ma", "massachusetts"),
    ("md", "maryland"),
    ("me", "maine"),
    ("mi", "michigan"),
    ("mn", "minnesota"),
    ("mo", "missouri"),
    ("ms", "mississippi"),
    ("mt", "montana"),
    ("nc", "north carolina"),
    ("nd", "north dakota"),
    ("ne", "nebraska"),
    ("nh", "new hampshire"),
    ("nj", "new jersey"),
    ("nm", "new mexico"),
    ("nv", "nevada"),
    ("ny", "new york"),
    ("oh", "ohio"),
    ("ok", "oklahoma"),
    ("or", "oregon"),
    ("pa", "pennsylvania"),
    ("sc", "south carolina"),
    ("sd", "south dakota"),
    ("tn", "tennessee"),
    ("tx", "texas"),
    ("ut", "utah"),
    ("va", "virginia"),
    ("vt", "vermont"),
    ("wa", "washington"),
    ("wi", "wisconsin"),
    ("wy", "wyoming"),
];

/// Interstate numbers.
pub const INTERSTATES: &[u32] = &[
    5, 8, 10, 15, 17, 20, 25, 26, 29, 30, 35, 40, 44, 45, 49, 55, 57, 59, 64, 65, 69, 70, 71, 75,
    76, 77, 78, 79, 80, 81, 84, 85, 87, 89, 90, 91, 94, 95,
];

/// Truck-stop chains.
pub const CHAINS: &[(&str, &[&str])] = &[
    ("pilot", &["pilot", "a pilot", "pilot travel center"]),
    ("flying j", &["flying j", "a flying j"]),
    ("loves", &["loves", "a loves", "love's"]),
    ("ta", &["ta", "a ta", "travel centers of america"]),
    ("petro", &["petro", "a petro", "petro stopping center"]),
    ("sapp bros", &["sapp bros", "sapp brothers"]),
    ("kwik trip", &["kwik trip", "a kwik trip"]),
    ("bucees", &["bucees", "a bucees", "buc-ee's"]),
    ("road ranger", &["road ranger", "a road ranger"]),
    ("ambest", &["ambest", "an ambest"]),
    ("roadys", &["roadys", "a roadys"]),
    ("quiktrip", &["quiktrip", "a quiktrip", "qt"]),
    ("speedway", &["speedway", "a speedway"]),
    ("caseys", &["caseys", "a caseys", "casey's"]),
    ("iowa 80", &["iowa 80", "the iowa 80"]),
];

/// Points of interest.
pub const POI_TYPES: &[(&str, &[&str])] = &[
    ("fuel", &["fuel", "diesel", "a fuel stop", "a place to fuel up", "a diesel pump"]),
    ("parking", &["truck parking", "a place to park", "parking", "a spot to park"]),
    ("weigh_station", &["a weigh station", "the scales", "a scale house", "weigh station"]),
    ("rest_area", &["a rest area", "a rest stop", "rest area"]),
    ("repair", &["a repair shop", "a mechanic", "truck repair", "a diesel mechanic"]),
    ("truck_wash", &["a truck wash", "truck wash", "a wash bay"]),
    ("tire_shop", &["a tire shop", "tire service", "somewhere to fix a tire"]),
    ("cat_scale", &["a cat scale", "a certified scale", "cat scale"]),
    ("shower", &["showers", "a shower", "somewhere to shower"]),
    ("restaurant", &["food", "a restaurant", "something to eat", "a diner"]),
];

/// Route preferences.
pub const PREFERENCES: &[(&str, &[&str])] = &[
    ("avoid_tolls", &["avoid tolls", "no toll roads", "stay off the tollways", "skip the tolls"]),
    (
        "avoid_low_bridges",
        &["avoid low bridges", "stay away from low clearance bridges", "no low clearances"],
    ),
    (
        "avoid_hazmat_restricted",
        &[
            "avoid hazmat restricted roads",
            "keep me on hazmat approved routes",
            "i'm hauling hazmat",
        ],
    ),
    ("avoid_highways", &["avoid highways", "stay off the interstate", "take back roads"]),
    ("fastest", &["fastest route", "the quickest way", "fastest way"]),
    ("shortest", &["shortest route", "the shortest way", "fewest miles"]),
    ("avoid_ferries", &["avoid ferries", "no ferries"]),
    ("avoid_steep_grades", &["avoid steep grades", "no mountain passes", "stay off steep hills"]),
    ("avoid_residential", &["avoid residential streets", "stay out of neighborhoods"]),
];

/// Expense categories.
pub const EXPENSE_CATEGORIES: &[(&str, &[&str])] = &[
    ("fuel", &["fuel", "diesel", "fuel up"]),
    ("tolls", &["tolls", "toll", "a toll"]),
    ("scale", &["scale", "scale ticket", "weigh ticket"]),
    ("parking", &["parking", "overnight parking"]),
    ("lumper", &["lumper", "lumper fee", "unloading fee"]),
    ("meals", &["meals", "food", "lunch", "dinner"]),
    ("repairs", &["repairs", "repair", "mechanic"]),
    ("truck_wash", &["truck wash", "wash"]),
    ("lodging", &["hotel", "motel", "lodging"]),
    ("tires", &["tires", "new tire", "tire repair"]),
];

/// Commodities.
pub const COMMODITIES: &[&str] = &[
    "produce",
    "frozen food",
    "steel coils",
    "lumber",
    "paper products",
    "electronics",
    "auto parts",
    "dry goods",
    "beverages",
    "building materials",
    "chemicals",
    "feed",
    "furniture",
    "plastics",
    "canned goods",
    "grain",
    "machinery",
    "pipe",
    "appliances",
    "medical supplies",
];

/// To-do items.
pub const TASKS: &[&str] = &[
    "call dispatch",
    "check tire pressure",
    "send the bol",
    "fax the paperwork",
    "call the receiver",
    "call the shipper",
    "book a hotel",
    "get an oil change",
    "check the reefer temp",
    "scan the receipts",
    "grease the fifth wheel",
    "call my wife",
    "renew my medical card",
    "check the brakes",
    "top off the def",
    "wash the truck",
    "update my logbook",
    "pick up a load lock",
    "check in at the gate",
    "call the shop",
];

/// Reroute reasons.
pub const REROUTE_REASONS: &[(&str, &[&str])] = &[
    ("accident", &["an accident", "a wreck", "a crash"]),
    ("construction", &["construction", "road work", "a work zone"]),
    ("traffic", &["traffic", "a traffic jam", "stop and go traffic"]),
    ("weather", &["weather", "snow", "ice on the road", "high winds"]),
    ("road_closure", &["a road closure", "the road is closed", "a closed road"]),
];

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] =
    ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];

/// `n` (below 1000) in words: 42 -> "forty two", 305 -> "three hundred five".
pub fn spell(n: u32) -> String {
    if n < 20 {
        return ONES[n as usize].to_string();
    }
    if n < 100 {
        let t = TENS[(n / 10) as usize];
        return if n.is_multiple_of(10) {
            t.to_string()
        } else {
            format!("{t} {}", ONES[(n % 10) as usize])
        };
    }
    let h = format!("{} hundred", ONES[(n / 100).min(19) as usize]);
    if n.is_multiple_of(100) { h } else { format!("{h} {}", spell(n % 100)) }
}

/// The spoken state name of a postal code.
pub fn state_name(code: &str) -> &'static str {
    STATES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_city_state_has_a_name_and_numbers_spell() {
        for (_, s) in CITIES {
            assert!(!state_name(s).is_empty(), "{s}");
        }
        assert_eq!(spell(42), "forty two");
        assert_eq!(spell(305), "three hundred five");
        assert_eq!(spell(13), "thirteen");
        assert_eq!(spell(90), "ninety");
    }
}
