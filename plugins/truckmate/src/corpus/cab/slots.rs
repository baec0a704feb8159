//! Slot filling for the `cab` generator: the canonical values are those of [`super::super::pools`]
//! (the labels are the same as `templates-v1`'s), spoken in many more ways: jargon and brand
//! names for places, causes for reasons and preferences, numbers as digits, words or digit pairs
//! ("exit one twenty three"), times as "half past", "noon" or "fifteen hundred".

use super::super::pools::*;
use super::super::{digits, pick};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

type Spoken = &'static [(&'static str, &'static [&'static str])];

/// More ways to say a point of interest, by canonical value.
const POI_EXTRA: Spoken = &[
    ("fuel", &["some fuel", "go juice", "a fuel island", "a place to fuel"]),
    ("parking", &["a place to shut down", "somewhere to park for the night", "a parking spot"]),
    (
        "weigh_station",
        // "wait station" is how speech recognition hears "weigh station" as often as not.
        &["the chicken coop", "a chicken coop", "the coop", "the scale house", "a wait station"],
    ),
    ("rest_area", &["a rest stop", "a bathroom", "a restroom"]),
    ("repair", &["a truck shop", "a diesel shop", "road service"]),
    ("truck_wash", &["a blue beacon", "somewhere to wash the truck"]),
    ("tire_shop", &["a tire guy", "a place to fix a flat"]),
    ("cat_scale", &["a cat scale to weigh my load", "a certified cat scale"]),
    ("shower", &["a place to shower", "somewhere to clean up"]),
    ("restaurant", &["some grub", "some chow", "a bite to eat", "somewhere to eat"]),
];

/// A cause that asks for a point of interest without naming it.
const POI_CAUSES: Spoken = &[
    ("fuel", &["i'm running on fumes", "i'm low on fuel", "fuel light just came on"]),
    (
        "parking",
        &[
            "i need to shut down for the night",
            "i need somewhere to sleep tonight",
            "i'm about out of hours",
            "my clock's almost out",
        ],
    ),
    ("restaurant", &["i'm starving", "i'm hungry", "i could use a bite"]),
    ("shower", &["i really need a shower", "i need to clean up"]),
    (
        "repair",
        &[
            "my check engine light is on",
            "i think i blew an air line",
            "the truck's making a noise",
        ],
    ),
    (
        "tire_shop",
        &["i got a flat", "i think i blew a tire", "my tire's going flat", "i got a blowout"],
    ),
    ("rest_area", &["i gotta use the bathroom", "nature's calling"]),
    ("truck_wash", &["this truck is filthy", "the rig is covered in mud"]),
    ("cat_scale", &["i need to scale this load", "i need to weigh this load"]),
];

/// Chains without an article (the cores supply one).
const CHAINS_BARE: Spoken = &[
    ("pilot", &["pilot", "pilot travel center"]),
    ("flying j", &["flying j", "flyin j"]),
    ("loves", &["loves", "love's", "loves travel stop"]),
    ("ta", &["ta", "t a", "travel centers of america"]),
    ("petro", &["petro", "petro stopping center"]),
    ("sapp bros", &["sapp bros", "sapp brothers"]),
    ("kwik trip", &["kwik trip", "kwiktrip"]),
    ("bucees", &["bucees", "buc-ee's"]),
    ("road ranger", &["road ranger"]),
    ("ambest", &["ambest", "am best"]),
    ("roadys", &["roadys", "roady's"]),
    ("quiktrip", &["quiktrip", "qt"]),
    ("speedway", &["speedway"]),
    ("caseys", &["caseys", "casey's"]),
    ("iowa 80", &["iowa 80", "iowa eighty"]),
];

const PREF_EXTRA: Spoken = &[
    ("avoid_tolls", &["no tolls", "keep me off the turnpike", "no turnpikes"]),
    ("avoid_low_bridges", &["watch out for low bridges", "no low bridges"]),
    (
        "avoid_hazmat_restricted",
        &[
            "hazmat routes only",
            "keep me on hazmat routes",
            "route me legal for hazmat",
            "keep it hazmat legal",
        ],
    ),
    ("avoid_highways", &["no interstates", "keep me off the interstate", "back roads only"]),
    ("fastest", &["quickest route", "get me there fastest", "fastest way every time"]),
    ("shortest", &["least miles", "shortest distance"]),
    ("avoid_ferries", &["stay off ferries"]),
    ("avoid_steep_grades", &["no steep grades", "avoid the mountains", "stay off the grades"]),
    ("avoid_residential", &["no residential streets", "keep me out of neighborhoods"]),
];

/// Negated preferences: the driver lifts an avoidance ("don't avoid tolls anymore").
const PREF_ALLOW: Spoken = &[
    (
        "allow_tolls",
        &[
            "don't avoid tolls anymore",
            "dont avoid tolls",
            "tolls are fine",
            "toll roads are okay",
            "go ahead and use toll roads",
            "i don't mind tolls",
            "stop avoiding tolls",
            "tollways are okay",
            "you can use toll roads again",
            "tolls are fine now",
            "allow toll roads",
            "allow tolls",
            "i'm okay with toll roads",
            "toll roads are fine the company pays",
        ],
    ),
    (
        "allow_highways",
        &[
            "don't avoid highways anymore",
            "interstates are fine",
            "go ahead and use the interstate",
            "stop avoiding highways",
            "highways are okay",
            "the interstate's fine now",
            "you can take the interstate again",
            "highways are fine",
            "allow highways",
            "allow the interstate",
            "i'm fine running the interstate",
            "turn highways back on",
        ],
    ),
];

/// What a driver says about the load that implies a preference ("i'm ..." precedes it).
const PREF_CAUSES: Spoken = &[
    (
        "avoid_hazmat_restricted",
        &[
            "hauling hazmat",
            "placarded",
            "running hazmat",
            "hauling hazardous",
            "carrying hazardous material",
        ],
    ),
    ("avoid_low_bridges", &["pulling a tall trailer", "too tall for low bridges"]),
    ("avoid_tolls", &["not paying any tolls", "done paying tolls"]),
    ("avoid_steep_grades", &["too heavy for the mountain grades"]),
    (
        "avoid_low_bridges",
        &["thirteen six tall", "fourteen foot tall", "thirteen foot six", "running a tall load"],
    ),
];

/// What a driver has on that implies a preference ("i got ..." precedes it).
const PREF_HAVE: Spoken = &[
    ("avoid_hazmat_restricted", &["placards on", "hazmat on board", "a placarded load"]),
    ("avoid_low_bridges", &["a tall trailer", "a high load", "an over height load"]),
];

/// What a preference keeps the truck off ("don't take me over ...", "keep me off ...").
const PREF_OBJECTS: Spoken = &[
    ("avoid_tolls", &["toll roads", "any tolls", "the turnpike", "tollways"]),
    ("avoid_low_bridges", &["low bridges", "low clearances", "any low overpasses"]),
    ("avoid_hazmat_restricted", &["hazmat restricted roads", "roads that ban hazmat"]),
    ("avoid_highways", &["the interstate", "the interstates", "the big highways"]),
    ("avoid_ferries", &["ferries", "any ferries"]),
    ("avoid_steep_grades", &["mountain passes", "any mountain passes", "steep grades"]),
    ("avoid_residential", &["neighborhoods", "residential streets", "any subdivisions"]),
];

const PREF_FASTEST: Spoken = &[("fastest", &["the fastest route", "the quickest way", "fastest"])];
const PREF_SHORTEST: Spoken =
    &[("shortest", &["the shortest route", "the shortest way", "fewest miles", "shortest"])];

const CATEGORY_EXTRA: Spoken = &[
    ("fuel", &["the fuel"]),
    ("tolls", &["the turnpike", "toll road"]),
    ("scale", &["cat scale"]),
    ("parking", &["a parking spot"]),
    ("lumper", &["the lumper", "unloading"]),
    ("meals", &["breakfast", "supper", "chow"]),
    ("repairs", &["the shop", "a repair"]),
    ("truck_wash", &["blue beacon", "washout"]),
    ("lodging", &["hotel room", "a room"]),
    ("tires", &["a steer tire", "a drive tire"]),
];

/// Who was paid, naming an expense category ("paid the lumper ...", "the motel charged me ...").
const PAYEES: Spoken = &[
    ("fuel", &["pump", "fuel desk"]),
    ("tolls", &["toll booth", "turnpike"]),
    ("scale", &["scale", "cat scale"]),
    ("parking", &["parking lot", "lot attendant"]),
    ("lumper", &["lumper", "lumper guy", "unloaders"]),
    ("meals", &["diner", "restaurant", "waitress"]),
    ("repairs", &["mechanic", "shop", "road service guy"]),
    ("truck_wash", &["truck wash", "wash bay"]),
    ("lodging", &["motel", "hotel"]),
    ("tires", &["tire guy", "tire shop"]),
];

/// A cause said as a whole clause, naming why the driver wants another way.
const REASON_CAUSES: Spoken = &[
    (
        "weather",
        &[
            "snow's coming down hard",
            "roads are icing up",
            "wind's blowing hard",
            "fog's real thick",
        ],
    ),
    ("accident", &["somebody jackknifed", "there's a bad crash", "a wreck's got it blocked"]),
    ("construction", &["they're paving", "lanes are closed for work", "there's road work"]),
    ("traffic", &["traffic's not moving", "we're sitting still", "everything's backed up"]),
    ("road_closure", &["they closed the road", "the road's shut", "the highway's closed"]),
];

const REASON_EXTRA: Spoken = &[
    ("accident", &["a pileup", "a rollover", "a jackknife"]),
    ("construction", &["orange barrels", "lane closures"]),
    ("traffic", &["a backup", "bumper to bumper traffic"]),
    (
        "weather",
        &[
            "black ice",
            "a whiteout",
            "a snowstorm",
            "a snow storm",
            "flooding",
            "a tornado warning",
            "heavy rain",
        ],
    ),
    ("road_closure", &["a closure", "the road closed"]),
];

/// A road's state that is a reason to reroute ("the interstate's a parking lot").
const REASON_STATES: Spoken = &[
    ("traffic", &["a parking lot", "backed up", "bumper to bumper", "jammed up", "stop and go"]),
    ("accident", &["blocked by a wreck", "all tied up with a wreck"]),
    ("construction", &["all torn up", "nothing but orange barrels", "down to one lane"]),
    ("weather", &["iced over", "a sheet of ice", "snowed in", "flooded"]),
    ("road_closure", &["closed", "shut down", "closed up ahead"]),
];

/// More to-do items (the label is the task as said), so the model learns to copy any errand.
const TASKS_EXTRA: &[&str] = &[
    "buy a new phone charger",
    "pick up dog food",
    "call the insurance company",
    "pay the ifta taxes",
    "get a new headlight bulb",
    "check the oil",
    "print the rate confirmation",
    "send my logs to the safety department",
    "get my annual inspection done",
    "call the bank",
    "buy wiper fluid",
    "replace the mud flap",
    "drop off the permits",
    "text my daughter happy birthday",
    "get a haircut",
    "sign the settlement sheet",
    "order new gloves",
    "check the trailer seal",
    "pick up my paycheck",
    "schedule a dot physical",
];

/// More cities for `cab` (revision 6), so that the city is copied from what was said rather than
/// chosen among the ones training happened to name: freight towns of every region (three of them
/// were misses on a development set; the rest were not chosen by any set). `templates-v1` keeps
/// the shared pool.
const CITIES_MORE: &[(&str, &str)] = &[
    ("st paul", "mn"),
    ("st cloud", "mn"),
    ("mankato", "mn"),
    ("cedar rapids", "ia"),
    ("sioux city", "ia"),
    ("dubuque", "ia"),
    ("council bluffs", "ia"),
    ("modesto", "ca"),
    ("san jose", "ca"),
    ("oakland", "ca"),
    ("riverside", "ca"),
    ("san bernardino", "ca"),
    ("el centro", "ca"),
    ("corpus christi", "tx"),
    ("brownsville", "tx"),
    ("mcallen", "tx"),
    ("beaumont", "tx"),
    ("midland", "tx"),
    ("san angelo", "tx"),
    ("topeka", "ks"),
    ("salina", "ks"),
    ("champaign", "il"),
    ("evansville", "in"),
    ("south bend", "in"),
    ("akron", "oh"),
    ("youngstown", "oh"),
    ("erie", "pa"),
    ("york", "pa"),
    ("lancaster", "pa"),
    ("augusta", "ga"),
    ("dothan", "al"),
    ("tupelo", "ms"),
    ("hattiesburg", "ms"),
    ("gulfport", "ms"),
    ("lake charles", "la"),
    ("monroe", "la"),
    ("jonesboro", "ar"),
    ("fayetteville", "ar"),
    ("asheville", "nc"),
    ("wilmington", "nc"),
    ("spartanburg", "sc"),
    ("florence", "sc"),
    ("lynchburg", "va"),
    ("winchester", "va"),
    ("yuma", "az"),
    ("laramie", "wy"),
    ("rock springs", "wy"),
    ("great falls", "mt"),
    ("idaho falls", "id"),
    ("twin falls", "id"),
    ("provo", "ut"),
    ("carson city", "nv"),
    ("winnemucca", "nv"),
    ("santa fe", "nm"),
    ("roswell", "nm"),
    ("kalamazoo", "mi"),
    ("flint", "mi"),
    ("saginaw", "mi"),
    ("eau claire", "wi"),
    ("la crosse", "wi"),
    ("wausau", "wi"),
    ("kearney", "ne"),
    ("grand island", "ne"),
    ("aberdeen", "sd"),
    ("grand forks", "nd"),
    ("minot", "nd"),
    ("clarksville", "tn"),
    ("johnson city", "tn"),
    ("paducah", "ky"),
    ("owensboro", "ky"),
    ("ocala", "fl"),
    ("gainesville", "fl"),
    ("lakeland", "fl"),
    ("fort myers", "fl"),
];

/// Errands built from a verb and what it acts on (revision 6): with only the 40 listed ones the
/// model learned to pick one of them instead of copying the task it heard.
const TASK_FRAMES: &[(&[&str], &[&str])] = &[
    (
        &["call", "text", "email", "phone", "call back", "get ahold of"],
        &[
            "dispatch",
            "the broker",
            "the consignee",
            "the shipper",
            "the receiver",
            "my wife",
            "my husband",
            "mom",
            "my dad",
            "the yard",
            "the shop",
            "the bank",
            "my doctor",
            "the dealership",
            "the safety department",
            "my driver manager",
            "the lumper service",
            "the tire shop",
            "the kids",
            "my buddy",
            "the landlord",
            "payroll",
        ],
    ),
    (
        &["check", "look at", "double check", "inspect", "top off"],
        &[
            "the tire pressure",
            "the tires",
            "the oil",
            "oil",
            "the reefer temp",
            "reefer temp",
            "the load straps",
            "the lights",
            "the brakes",
            "the air lines",
            "the fifth wheel",
            "the coolant",
            "the def",
            "my logs",
            "the seal",
            "the chains",
            "the wipers",
            "the trailer doors",
            "the landing gear",
            "the gladhands",
        ],
    ),
    (
        &["pick up", "buy", "grab", "get", "order"],
        &[
            "my prescription",
            "dog food",
            "empties",
            "the paperwork",
            "a load lock",
            "a new charger",
            "my paycheck",
            "groceries",
            "a birthday card",
            "the permits",
            "new gloves",
            "a padlock",
            "bungee cords",
            "a tarp",
            "my laundry",
            "wiper fluid",
            "a pallet jack",
            "coffee filters",
            "a new flashlight",
            "some ice",
        ],
    ),
    (
        &["send", "fax", "scan", "turn in", "email", "print"],
        &[
            "the bol",
            "the pod",
            "my logs",
            "the paperwork",
            "the receipts",
            "the bills",
            "the rate confirmation",
            "the lumper receipt",
            "the scale ticket",
            "my fuel receipts",
            "the bills to the office",
            "my logs to safety",
            "the pod to dispatch",
        ],
    ),
    (
        &["schedule", "book", "set up", "make"],
        &[
            "a dot physical",
            "an oil change",
            "a hotel",
            "the annual inspection",
            "a tire rotation",
            "a doctor's appointment",
            "a dentist appointment",
            "a truck wash",
            "a pm service",
            "an alignment",
        ],
    ),
    (
        &["do", "finish", "start"],
        &["my post trip", "my pre trip", "my logs", "the inspection", "my taxes", "the laundry"],
    ),
];

/// Goods said whole (revision 6), and foods said with how they are kept: commodities are copied
/// from what was said, so there are many.
const GOODS: &[&str] = &[
    "paper rolls",
    "cardboard",
    "steel",
    "steel beams",
    "cement",
    "sand",
    "fertilizer",
    "seed",
    "mattresses",
    "tires",
    "tvs",
    "computers",
    "toys",
    "clothing",
    "shoes",
    "books",
    "paint",
    "batteries",
    "solar panels",
    "empty pallets",
    "pallets",
    "mail",
    "general freight",
    "household goods",
    "cat litter",
    "dog food",
    "pet food",
    "beer",
    "soda",
    "bottled water",
    "candy",
    "snacks",
    "cereal",
    "pharmaceuticals",
    "car batteries",
    "hay",
    "cotton",
    "copper wire",
    "roofing shingles",
    "drywall",
];
const FOODS: &[&str] = &[
    "chicken",
    "beef",
    "pork",
    "fish",
    "potatoes",
    "vegetables",
    "fruit",
    "berries",
    "corn",
    "peas",
    "onions",
    "lettuce",
    "apples",
    "bananas",
    "watermelons",
    "cheese",
    "milk",
    "ice cream",
    "eggs",
    "juice",
    "pizza",
    "french fries",
    "meat",
    "seafood",
    "produce",
];
const FOOD_KEPT: &[&str] = &["frozen", "fresh", "canned", "chilled", "boxed"];

/// A commodity as said: a listed one, goods, or a food and how it is kept.
fn commodity(rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..10) {
        0..=2 => pick(rng, COMMODITIES).to_string(),
        3..=5 => pick(rng, GOODS).to_string(),
        6 | 7 => format!("{} {}", pick(rng, FOOD_KEPT), pick(rng, FOODS)),
        _ => pick(rng, FOODS).to_string(),
    }
}

/// A to-do item as said: a listed one, or a verb and what it acts on.
fn task(rng: &mut ChaCha8Rng) -> String {
    match rng.gen_range(0..10) {
        0..=1 => pick(rng, TASKS).to_string(),
        2 => pick(rng, TASKS_EXTRA).to_string(),
        _ => {
            let (verbs, objects) = *pick(rng, TASK_FRAMES);
            format!("{} {}", pick(rng, verbs), pick(rng, objects))
        }
    }
}

/// Picks a canonical value of `base` uniformly, then one of its spoken forms from `base` and
/// `extra` together.
fn categorical(rng: &mut ChaCha8Rng, base: Spoken, extra: Spoken) -> (&'static str, &'static str) {
    let (value, spoken) = *pick(rng, base);
    let more: &[&str] = extra.iter().find(|(v, _)| *v == value).map(|(_, s)| *s).unwrap_or(&[]);
    let i = rng.gen_range(0..spoken.len() + more.len());
    (value, if i < spoken.len() { spoken[i] } else { more[i - spoken.len()] })
}

/// `n` as a driver reads a three-digit number: 123 -> "one twenty three", 205 -> "two oh five".
fn digit_pairs(n: u32) -> String {
    let (h, rest) = (n / 100, n % 100);
    match rest {
        0 => format!("{} hundred", spell(h)),
        1..=9 => format!("{} oh {}", spell(h), spell(rest)),
        _ => format!("{} {}", spell(h), spell(rest)),
    }
}

/// A whole number below 1000 in digits, words or (three digits) digit pairs.
fn number(rng: &mut ChaCha8Rng, n: u32) -> String {
    match rng.gen_range(0..10) {
        0..=4 => n.to_string(),
        5 | 6 if n >= 100 => digit_pairs(n),
        _ => spell(n),
    }
}

fn reference_number(rng: &mut ChaCha8Rng, len: usize) -> (String, String) {
    let n = digits(rng, len);
    let spoken = match rng.gen_range(0..20) {
        0..=11 => n.clone(),
        12..=16 => n.chars().map(String::from).collect::<Vec<_>>().join(" "),
        _ => n
            .chars()
            .map(|c| match c.to_digit(10) {
                Some(0) => "oh".to_string(),
                Some(d) => spell(d),
                None => c.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    (n, spoken)
}

fn time(rng: &mut ChaCha8Rng) -> (String, String) {
    let h12 = rng.gen_range(1..13u32);
    let m = *pick(rng, &[0u32, 15, 30, 45]);
    let pm = rng.gen_bool(0.5);
    let h24 = (h12 % 12) + if pm { 12 } else { 0 };
    let ampm = if pm { "pm" } else { "am" };
    let part = match (pm, h12) {
        (false, 12) => "at night",
        (false, _) => "in the morning",
        (true, 12 | 1..=4) => "in the afternoon",
        (true, 5..=8) => "in the evening",
        (true, _) => "at night",
    };
    // "tonight" for an evening hour, with the hour and the quarters said around it.
    let tonight = pm && (6..=11).contains(&h12);
    let spoken = match (rng.gen_range(0..9), m) {
        (0 | 3 | 7, 0) if h12 == 12 => (if pm { "noon" } else { "midnight" }).to_string(),
        (8, 0) if tonight => format!("{} tonight", spell(h12)),
        (8, 15) if tonight => format!("quarter after {} tonight", spell(h12)),
        (8, 30) if tonight => format!("half past {} tonight", spell(h12)),
        (8, 45) if tonight && h12 < 11 => format!("quarter to {} tonight", spell(h12 + 1)),
        (0 | 1, 0) => format!("{h12} {ampm}"),
        (2, 0) => format!("{} {ampm}", spell(h12)),
        (3, 0) => format!("{} o'clock {part}", spell(h12)),
        (4, 0) if h24 >= 10 => format!("{} hundred", spell(h24)),
        (4, 0) => format!("{h12}{ampm}"),
        (5, 15) => format!("quarter after {} {ampm}", spell(h12)),
        (5, 30) => format!("half past {} {ampm}", spell(h12)),
        (5, 45) if h12 < 11 => format!("quarter to {} {ampm}", spell(h12 + 1)),
        (6, _) if m > 0 => format!("{} {} {part}", spell(h12), spell(m)),
        (_, 0) => format!("{} {ampm}", spell(h12)),
        (_, _) => format!("{h12}:{m:02} {ampm}"),
    };
    (format!("{h24:02}:{m:02}"), spoken)
}

fn amount(rng: &mut ChaCha8Rng) -> (String, String) {
    // Half the amounts are below 100 dollars, as meals, scale tickets, parking and most tolls are;
    // drawn uniformly over 3..900, "thirteen seventy five" was rare next to "two twelve forty"
    // and revision 5's first model read it as 135.75.
    let d = if rng.gen_bool(0.5) { rng.gen_range(3..100u32) } else { rng.gen_range(100..900u32) };
    let c = if rng.gen_bool(0.5) { 0 } else { rng.gen_range(1..100u32) };
    let spoken = match (rng.gen_range(0..9), c) {
        (0, _) => format!("{d}.{c:02}"),
        (1, 0) => format!("{} dollars", number(rng, d)),
        (1, _) => format!("{d} dollars and {c} cents"),
        (2, 0) => format!("{} bucks", number(rng, d)),
        (3 | 5, 10..) if d < 100 => format!("{} {}", spell(d), spell(c)),
        // Not for whole hundreds: "four hundred fifty" is 450.00, not 400.50.
        (5, 10..) if d % 100 != 0 => format!("{} {}", spell(d), spell(c)),
        (4, 10..) => format!("{} dollars {}", spell(d), spell(c)),
        (4, 0) if d > 100 && d % 100 != 0 => {
            format!("{} hundred and {} dollars", spell(d / 100), spell(d % 100))
        }
        // "two twelve forty": dollars in digit pairs, then the cents.
        (6, 10..) if d >= 100 && d % 100 != 0 => format!("{} {}", digit_pairs(d), spell(c)),
        (6, 1..) => format!("{} dollars and {} cents", spell(d), spell(c)),
        (7, 0) if (101..200).contains(&d) => {
            let and = if rng.gen_bool(0.5) { "and " } else { "" };
            format!("a hundred {and}{}", spell(d - 100))
        }
        // A bare number, the core says what it was for ("spent fifteen on dinner"); never in
        // digit pairs, which would read as dollars and cents ("four eighty six").
        (8, 0) if rng.gen_bool(0.5) => d.to_string(),
        (8, 0) => spell(d),
        (_, 0) => format!("{d} bucks"),
        (_, _) => format!("${d}.{c:02}"),
    };
    (format!("{d}.{c:02}"), spoken)
}

fn weight(rng: &mut ChaCha8Rng) -> (String, String) {
    let thousands = rng.gen_range(10..46u32);
    let hundreds = if rng.gen_bool(0.6) { 0 } else { rng.gen_range(1..10u32) };
    // A scale ticket's weight to the ten pounds, read in digits ("38260 pounds").
    if rng.gen_bool(0.1) {
        let w = thousands * 1000 + rng.gen_range(1..100u32) * 10;
        let unit = *pick(rng, &["pounds", "lbs", "pounds gross"]);
        return (w.to_string(), format!("{w} {unit}"));
    }
    let w = thousands * 1000 + hundreds * 100;
    let spoken = match (rng.gen_range(0..9), hundreds) {
        (0, 0) => format!("{thousands} thousand pounds"),
        (1, 0) => format!("{} thousand pounds", spell(thousands)),
        (2, 0) => format!("{thousands}k"),
        (3, 0) => format!("{} thousand", spell(thousands)),
        (4, _) => format!("{w} lbs"),
        // "forty two five" is 42,500 on a scale ticket.
        (6, 1..) => format!("{} {}", spell(thousands), spell(hundreds)),
        (7, 1..) => {
            let unit = if rng.gen_bool(0.5) { " pounds" } else { "" };
            format!("{} thousand {} hundred{unit}", spell(thousands), spell(hundreds))
        }
        (8, 1..) => format!("{thousands} thousand {hundreds} hundred pounds"),
        _ => format!("{w} pounds"),
    };
    (w.to_string(), spoken)
}

fn highway(rng: &mut ChaCha8Rng) -> (String, String) {
    let n = *pick(rng, INTERSTATES);
    let spoken = match rng.gen_range(0..9) {
        8 => n.to_string(),
        0 => format!("i-{n}"),
        1 => format!("i {n}"),
        2 => format!("interstate {n}"),
        3 => format!("i {}", spell(n)),
        4 => format!("interstate {}", spell(n)),
        5 => format!("i{n}"),
        6 => format!("the {}", spell(n)),
        _ => format!("the {n}"),
    };
    (format!("i-{n}"), spoken)
}

/// Whether placeholder `name` is a distractor: spoken, never labelled.
pub fn is_distractor(name: &str) -> bool {
    matches!(name, "not_city" | "not_chain" | "any_city" | "team")
}

/// Sports teams a driver might ask about (out-of-domain utterances).
const TEAMS: &[&str] = &[
    "cowboys",
    "chiefs",
    "packers",
    "bears",
    "steelers",
    "broncos",
    "titans",
    "yankees",
    "cubs",
    "cardinals",
    "braves",
    "rangers",
    "lakers",
    "bulls",
    "red sox",
    "astros",
];

/// Fills distractor `name`: words that differ from the labelled slots.
pub fn distractor(rng: &mut ChaCha8Rng, name: &str, slots: &BTreeMap<String, String>) -> String {
    match name {
        "not_city" | "any_city" => loop {
            let (city, _) = *pick(rng, CITIES);
            if slots.get("city").map(String::as_str) != Some(city) {
                return city.to_string();
            }
        },
        "not_chain" => loop {
            let (chain, spoken) = *pick(rng, CHAINS_BARE);
            if slots.get("chain").map(String::as_str) != Some(chain) {
                return pick(rng, spoken).to_string();
            }
        },
        _ => pick(rng, TEAMS).to_string(),
    }
}

/// Fills placeholder `name`: the spoken words, and the slots it sets.
pub fn fill(rng: &mut ChaCha8Rng, name: &str, slots: &mut BTreeMap<String, String>) -> String {
    let mut set = |k: &str, v: &str| {
        slots.insert(k.to_string(), v.to_string());
    };
    let (key, value, spoken): (&str, String, String) = match name {
        "dest" => {
            let (city, state) =
                if rng.gen_bool(0.25) { *pick(rng, CITIES_MORE) } else { *pick(rng, CITIES) };
            // "st louis" is said, and written by speech recognition, "saint louis" as often.
            let said = match city.strip_prefix("st ") {
                Some(rest) if rng.gen_bool(0.5) => format!("saint {rest}"),
                _ => city.to_string(),
            };
            if rng.gen_bool(0.5) {
                set("state", state);
                // Speech recognition writes a state as its postal code now and then ("dallas tx").
                let state_said = if rng.gen_bool(0.15) { state } else { state_name(state) };
                ("city", city.to_string(), format!("{said} {state_said}"))
            } else {
                ("city", city.to_string(), said)
            }
        }
        "highway" => {
            let (v, s) = highway(rng);
            ("highway", v, s)
        }
        "exit" => {
            let n = rng.gen_range(1..400u32);
            ("exit", n.to_string(), number(rng, n))
        }
        "poi" => {
            let (v, s) = categorical(rng, POI_TYPES, POI_EXTRA);
            ("poi_type", v.to_string(), s.to_string())
        }
        "poi_cause" => {
            let (v, s) = categorical(rng, POI_CAUSES, &[]);
            ("poi_type", v.to_string(), s.to_string())
        }
        "chain" => {
            let (v, s) = categorical(rng, CHAINS_BARE, &[]);
            ("chain", v.to_string(), s.to_string())
        }
        "pref" | "pref_allow" | "pref_cause" | "pref_have" | "pref_object" | "pref_fastest"
        | "pref_shortest" => {
            let (base, extra) = match name {
                "pref" => (PREFERENCES, PREF_EXTRA),
                "pref_allow" => (PREF_ALLOW, &[][..]),
                "pref_cause" => (PREF_CAUSES, &[][..]),
                "pref_have" => (PREF_HAVE, &[][..]),
                "pref_object" => (PREF_OBJECTS, &[][..]),
                "pref_fastest" => (PREF_FASTEST, &[][..]),
                _ => (PREF_SHORTEST, &[][..]),
            };
            let (v, s) = categorical(rng, base, extra);
            ("preference", v.to_string(), s.to_string())
        }
        "task" => {
            let t = task(rng);
            ("task", t.clone(), t)
        }
        "time" => {
            let (v, s) = time(rng);
            ("time", v, s)
        }
        "amount" => {
            let (v, s) = amount(rng);
            ("amount", v, s)
        }
        "category" | "payee" => {
            let (base, extra) = if name == "category" {
                (EXPENSE_CATEGORIES, CATEGORY_EXTRA)
            } else {
                (PAYEES, &[][..])
            };
            let (v, s) = categorical(rng, base, extra);
            ("category", v.to_string(), s.to_string())
        }
        "weight" => {
            let (v, s) = weight(rng);
            ("weight_lbs", v, s)
        }
        "commodity" => {
            let c = commodity(rng);
            ("commodity", c.clone(), c)
        }
        "bol" | "po" => {
            // Short ones too (revision 6): with only 5 to 9 digits the model padded a short PO.
            let len = if name == "bol" { rng.gen_range(4..10) } else { rng.gen_range(3..9) };
            let (v, s) = reference_number(rng, len);
            (name, v, s)
        }
        "reason" | "reason_state" | "reason_cause" => {
            let (base, extra) = match name {
                "reason" => (REROUTE_REASONS, REASON_EXTRA),
                "reason_state" => (REASON_STATES, &[][..]),
                _ => (REASON_CAUSES, &[][..]),
            };
            let (v, s) = categorical(rng, base, extra);
            ("reason", v.to_string(), s.to_string())
        }
        other => return other.to_string(),
    };
    set(key, &value);
    spoken
}

/// Every spoken form of canonical `value` for categorical placeholder `name` (tests check that
/// a label follows what the utterance says).
#[cfg(test)]
pub fn forms(name: &str, value: &str) -> Vec<&'static str> {
    let lists: &[Spoken] = match name {
        "poi" => &[POI_TYPES, POI_EXTRA],
        "poi_cause" => &[POI_CAUSES],
        "chain" => &[CHAINS_BARE],
        "pref" => &[PREFERENCES, PREF_EXTRA],
        "pref_allow" => &[PREF_ALLOW],
        "pref_cause" => &[PREF_CAUSES],
        "pref_have" => &[PREF_HAVE],
        "pref_object" => &[PREF_OBJECTS],
        "pref_fastest" => &[PREF_FASTEST],
        "pref_shortest" => &[PREF_SHORTEST],
        "category" => &[EXPENSE_CATEGORIES, CATEGORY_EXTRA],
        "payee" => &[PAYEES],
        "reason" => &[REROUTE_REASONS, REASON_EXTRA],
        "reason_state" => &[REASON_STATES],
        "reason_cause" => &[REASON_CAUSES],
        _ => &[],
    };
    lists
        .iter()
        .flat_map(|l| l.iter().filter(|(v, _)| *v == value).flat_map(|(_, s)| s.iter().copied()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_pairs_read_like_a_driver() {
        assert_eq!(digit_pairs(123), "one twenty three");
        assert_eq!(digit_pairs(205), "two oh five");
        assert_eq!(digit_pairs(300), "three hundred");
        assert_eq!(digit_pairs(110), "one ten");
    }

    #[test]
    fn every_extra_form_names_a_canonical_value_of_its_pool() {
        for (extra, base) in [
            (POI_EXTRA, POI_TYPES),
            (POI_CAUSES, POI_TYPES),
            (PREF_EXTRA, PREFERENCES),
            (PREF_CAUSES, PREFERENCES),
            (PREF_HAVE, PREFERENCES),
            (PREF_OBJECTS, PREFERENCES),
            (PAYEES, EXPENSE_CATEGORIES),
            (REASON_CAUSES, REROUTE_REASONS),
            (CATEGORY_EXTRA, EXPENSE_CATEGORIES),
            (REASON_EXTRA, REROUTE_REASONS),
            (REASON_STATES, REROUTE_REASONS),
            (CHAINS_BARE, CHAINS),
        ] {
            for (value, _) in extra {
                assert!(base.iter().any(|(v, _)| v == value), "{value}");
            }
        }
    }
}
