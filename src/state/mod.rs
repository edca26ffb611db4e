//! State keys: which keys they are (rules), how their values are stored (codec, envelope), and
//! how versions are kept (versions).

pub mod codec;
pub mod envelope;
pub mod rules;
pub mod sample;

use rules::Rules;

/// Everything a session needs to treat state keys.
pub struct StateEngine {
    /// The configured rules.
    pub rules: Rules,
    /// Largest value we will decode.
    pub max_decoded: usize,
}

impl StateEngine {
    /// Builds the engine from validated configuration.
    pub fn new(rules: Rules, max_decoded: usize) -> StateEngine {
        StateEngine { rules, max_decoded }
    }

    /// No rules: a plain transparent proxy.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
