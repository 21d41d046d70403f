//! What a check found: errors, which stop a start, and warnings, which do not. Each
//! names its file first (and line, where there is one), as `FILE:LINE: message`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// `FILE:LINE: message`, `FILE: message`, or a message alone.
    pub text: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{label}: {}", self.text)
    }
}

/// Problems in the order they were found.
#[derive(Debug, Clone, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn error(&mut self, text: impl Into<String>) {
        self.push(Severity::Error, text.into());
    }

    pub fn warning(&mut self, text: impl Into<String>) {
        self.push(Severity::Warning, text.into());
    }

    fn push(&mut self, severity: Severity, text: String) {
        self.0.push(Problem { severity, text });
    }

    /// Records `result`'s error, if any, and passes on its value.
    pub fn take<T>(&mut self, result: Result<T, impl Into<String>>) -> Option<T> {
        result.map_err(|e| self.error(e)).ok()
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.0.iter().filter(|p| p.severity == severity).count()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// The first error, for a start that stops at it; warnings are handed to `warn`.
    pub fn into_result(self, mut warn: impl FnMut(&str)) -> Result<(), String> {
        let mut first = None;
        for problem in self.0 {
            match problem.severity {
                Severity::Warning => warn(&problem.text),
                Severity::Error => {
                    first.get_or_insert(problem.text);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_stops_and_warnings_are_passed_on() {
        let mut p = Problems::default();
        p.warning("a.pem: expires in 3 days");
        assert_eq!(p.take(Err::<(), _>("k.keys:2: bad")), None);
        p.error("b.pem: missing");
        assert_eq!(p.count(Severity::Error), 2);
        assert_eq!(
            p.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "warning: a.pem: expires in 3 days",
                "error: k.keys:2: bad",
                "error: b.pem: missing"
            ]
        );
        let mut warned = Vec::new();
        let result = p.into_result(|w| warned.push(w.to_string()));
        assert_eq!(result, Err("k.keys:2: bad".to_string()));
        assert_eq!(warned, ["a.pem: expires in 3 days"]);
    }
}
