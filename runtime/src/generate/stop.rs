//! Stop strings over streamed text: text is held back only while it could still be the start
//! of a stop string, so a stream never shows part of one, and stops where one appears.

/// A streaming matcher of stop strings.
///
/// ```
/// use distq_runtime::generate::StopStrings;
/// let mut stops = StopStrings::new(vec!["\nUser:".into()]);
/// assert_eq!(stops.push("Hello"), ("Hello".to_string(), false));
/// // "\nUs" could start the stop string: held back.
/// assert_eq!(stops.push(" there\nUs"), (" there".to_string(), false));
/// // It was one: what preceded it was already given, and the stream stops.
/// assert_eq!(stops.push("er: hi"), (String::new(), true));
/// ```
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

impl StopStrings {
    /// A matcher of `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> StopStrings {
        StopStrings { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds the next piece of text. Returns the text that may be shown now and whether a
    /// stop string was reached (the text before it is returned, the rest dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let shown = self.held[..at].to_string();
            self.held.clear();
            return (shown, true);
        }
        // The longest tail of the held text that starts some stop string stays held.
        let keep = (1..=self.held.len())
            .rev()
            .filter(|&n| self.held.is_char_boundary(self.held.len() - n))
            .find(|&n| self.stops.iter().any(|s| s.starts_with(&self.held[self.held.len() - n..])))
            .unwrap_or(0);
        let shown = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        (shown, false)
    }

    /// The text still held back (at the end of a generation that reached no stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_anywhere_give_the_same_text() {
        let text = "ab<|end|>cd";
        for split in 0..=text.len() {
            let mut stops = StopStrings::new(vec!["<|end|>".into(), "zz".into()]);
            let (a, stop_a) = stops.push(&text[..split]);
            let (b, stop_b) = if stop_a { (String::new(), true) } else { stops.push(&text[split..]) };
            assert_eq!((a + &b, stop_a || stop_b), ("ab".to_string(), true), "split at {split}");
        }
        // No stop string: everything comes out, the held tail at the end.
        let mut stops = StopStrings::new(vec!["xyz".into()]);
        let (shown, stop) = stops.push("wx");
        assert_eq!((shown.as_str(), stop), ("w", false));
        assert_eq!(stops.finish(), "x");
        // Multi-byte text is held at character boundaries.
        let mut stops = StopStrings::new(vec!["éa".into()]);
        assert_eq!(stops.push("dé"), ("d".to_string(), false));
        assert_eq!(stops.push("b"), ("éb".to_string(), false));
    }
}
