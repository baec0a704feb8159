//! Out-of-domain utterances for the `cab` generator, labelled `{"intent":"none","slots":{}}`:
//! chit-chat, weather, sports and trivia questions, CB radio chatter, requests the assistant
//! cannot serve (music, calls, the heater), noise words, fragments and false starts. Cities and
//! teams in them are distractors, never slots.

/// Out-of-domain patterns (see [`super::pattern`]); the index is the template for the splits.
pub const OOD: &[&str] = &[
    "(how's it going|how are you|how you doing|what's up|whats up|how's your day)",
    "(tell me|know any|you got) a (joke|good joke|funny one)",
    "(you awake|you there|are you listening|you still there) (truckmate|buddy|)",
    "(thank you|thanks|thanks a lot|appreciate you) (that's all|that's it|)",
    "(good morning|good night|good evening|morning|night night)",
    "(what's|whats|how's) the weather (like|gonna be|) (in {any_city}|today|tomorrow|tonight|up ahead)",
    "(is it|it's|is it gonna) (gonna rain|going to snow|supposed to storm|cold) (in {any_city}|tonight|tomorrow|today)",
    "(what's|whats) the (temperature|temp) (outside|in {any_city}|)",
    "(who won|did the {team} win|what's the score of) the {team} game",
    "(how about them|go) {team}",
    "(when do|what time do) the {team} play (tonight|today|this week|)",
    "(who's|who is) (the president|the richest man|the best quarterback) (right now|)",
    "(how tall|how old|how big) is (the empire state building|mount everest|the moon)",
    "(what's|what is) the capital of (texas|ohio|montana|canada|france)",
    "(how many|how much) (feet are in a mile|ounces in a pound|days till christmas)",
    "(breaker breaker|breaker one nine|breaker 19) (anybody got their ears on|come on|)",
    "(ten four|10-4|copy that|roger that|that's a big ten four) (good buddy|driver|)",
    "(what's your twenty|come on back|you got your ears on|over and out)",
    "(smokey|a bear|bears) (in the air|taking pictures|on the side) (back there|up ahead|)",
    "(smokey's|a bear's|county mountie's) (sitting|parked|hiding) (at the two twelve|at mile marker ninety|under the bridge|in the median)",
    "(play|put on) (some|) (music|country music|the radio|my playlist|a podcast)",
    "(turn up|turn down) the (volume|radio|music)",
    "(call|text) (my wife|my husband|mom|the kids|my buddy) (for me|)",
    "(turn|set) the (heat|ac|air|heater) (up|down|on|off)",
    "(what's|whats) (your name|the meaning of life|your favorite color)",
    "(do you|can you) (sing|dance|love me|dream)",
    "(are you|you) (a robot|real|a person|smart|a girl or a guy|a man or a woman|married|happy)",
    "(never mind|nevermind|forget it|cancel that|nothing|no thanks)",
    "(uh|um|hmm|huh|uh huh|mm) (uh|um|hmm|)",
    "(okay|ok|alright|yeah|yep|nope|no|yes)",
    "(hey truckmate|truckmate|hey|ok truckmate)",
    "(the|a|and|so|but|uh the|um so|and uh)",
    "(test test|testing|testing one two|mic check|check one two|check check|radio check)",
    "(take me|find me|start|where's|what's my|remind me|log) (uh|um|) (never mind|forget it|nothing)",
    "(oops|sorry|my bad) (wrong button|didn't mean that|talking to myself|not you)",
    "(i was talking to|i'm on the phone with|talking to) (dispatch|my wife|somebody else|the other driver)",
    "(man|boy|geez|dang) (this coffee is cold|these four wheelers|what a day|it's hot out)",
    "(what day is it|what's the date|what year is it)",
    "(what time zone|what county|what state) am i in (right now|)",
    "(spell|define) (the word|) (bridge|freight|diesel)",
    "(convert|what's) (fifty|a hundred|twenty) (miles to kilometers|dollars in euros)",
    "(order|buy|get) me a (pizza|new phone|coffee|lottery ticket|pack of smokes|energy drink) (online|)",
    "(who sings|what song is) this (song|one|)",
    "(open|close) the (window|garage|door)",
    "(how do i|can you) (fix a leaky faucet|make chili|tie a tie)",
    "(did you see|you hear about) (that|the) (game|news|movie) (last night|)",
    "(set|bump|turn off|turn on) the (cruise|cruise control|wipers|headlights|jake brake|fog lights) (to sixty five|on|off|up|)",
    "(text|message|email) (dispatch|my wife|the shipper|my buddy) (that|) (i'm running late|i'll be there soon|i love her|to call me back)",
    "(i love|i hate|i miss|i'm sick of) (my truck|this road|home|my dog|this job|these four wheelers)",
    "(man|geez|) i'm (so bored|missing home|tired of driving|sick of this traffic) (today|)",
    "(what's|read me|tell me) the (news|headlines|stock market) (today|this morning|)",
    "(how do i|can you help me) (fix|reset|update) my (phone|tablet|radio|reefer unit)",
    "(what's|recommend) a good (podcast|audiobook|movie|song) (to listen to|)",
    "(my|the) (dog|cat|kid) (needs|wants) (a walk|to eat|attention|to go out)",
    "(did you see|look at) (that sunset|that deer|those clouds|that rainbow)",
    "(lol|haha|ha ha|lmao) (okay|ok|nice|)",
    "(what's|what is) (two plus two|ten times five|half of sixty|the square root of nine)",
    "(my|oh my|man my) (back|neck|knee|shoulder|head) (is killing me|hurts|is sore|is acting up) (today|again|)",
    "(these|those|the) (four wheelers|cars|tourists|other drivers) (don't know how to drive|are crazy|keep cutting me off|drive like idiots)",
    "(open|launch|pull up) (pandora|spotify|youtube|facebook|the weather channel|the news app) (app|for me|)",
    "is it legal to (run a radar detector|use a radar detector|wear headphones|smoke in the cab|idle all night) (in a cmv|in my truck|in {any_city}|)",
    "(what's|whats) the (national average|average price|going price) (for|of) (diesel|gas) (right now|this week|these days|)",
    "(back in|i remember back in) (the day|eighty nine|the eighties|the nineties|my day) (we|i) (didn't have none of this|had a paper map|had nothing but a cb|ran without gps)",
    "(my|the) (co driver|relief driver|partner|team driver) (snores like a freight train|won't stop talking|eats all the snacks|is driving me crazy)",
    "(what time is it|what's the time) (in {any_city}|back home|on the east coast|out west|right now)",
    "(what's|whats) the speed limit (through here|here|in {any_city}|on this road)",
    "(how do i|how do you|what's the best way to) (back into a tight dock|check the air brakes|chain up|slide the tandems|couple a trailer|set the trailer brakes)",
    "send (a|) text to my (dispatcher|wife|husband|kids|buddy) (that i'm running late|that i love her|to call me back|)",
    "my (wife|husband|kids|mom) (is|are|she is|he is) (angry|mad|upset|worried) (because|cause) i (am not|wasn't|won't be) home (for|on) (her birthday|christmas|the weekend|thanksgiving)",
    "(look at|did you see) (this|that) (guy|idiot|clown) (cutting me off|tailgating me|merging without looking)",
    "(set|put) the (cab temp|temperature|thermostat|heat) (to|at) (sixty eight|seventy|72|65)",
    "(read|check|open) my (new|) (messages|texts|email)",
    "(hey|hi|ok|okay) truck mate",
    "(my first truck was|i used to drive|i started out in|i learned on) a (fifty eight|seventy nine|ninety two|two thousand five|1998) (peterbilt|kenworth|mack|freightliner|international|cabover)",
    "(my doctor says|the wife says|they keep telling me) i (oughta|gotta|need to|should) (lose|drop) (twenty|forty|fifty|thirty) pounds",
    "(the dog's|my dog's|the cat's|my partner's) been (riding|running) with me (eleven|five|three|twenty) years (now|)",
    "(i|we) used to live (outside of|near|in|just north of) {any_city} (back in the seventies|back in the day|for ten years|)",
    "(let me tell you about|i remember|you should've seen) the time i (hauled|pulled|ran) (a load of bananas|forty thousand pounds of eggs|a wide load|a reefer full of ice cream) (through|across|over) (a blizzard|the rockies|donner pass|wyoming)",
    "my (grandson|granddaughter|son|daughter|boy) just (started|made|joined) (little league|the team|the army|college) (he's|she's) (a heck of a|a real good|the best) (pitcher|player|kid)",
    "(the shipper's|the receiver's|they've|this place has) got me (waiting|sitting here) (three|five|six) hours (ridiculous|again|for nothing|)",
    "(the|my) check engine light's been on since {any_city} what do you (think|reckon) that is",
    "(i|i've) (paid|spent) (forty|two hundred|ninety) (dollars|bucks) (on|for) (this|these) (boots|jacket|sunglasses) (and they|they) (already|) (broke|fell apart|hurt my feet)",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::cab::pattern::expand;

    #[test]
    fn out_of_domain_patterns_expand_to_many_phrasings() {
        let n: usize = OOD.iter().map(|p| expand(p).len()).sum();
        assert!(n >= 500, "{n}");
    }
}
