//! A reader of the Prometheus text exposition format 0.0.4, strict enough
//! to refuse what a scraper would: the tests check both daemons' `/metrics`
//! and textfiles with it.

use ferry_common::metrics::valid_name;

/// The value of `series` (`name` or `name{labels}` exactly as exposed) in
/// samples from [`parse`].
pub fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// Checks that `text` is well-formed exposition text: every line a
/// `# HELP`/`# TYPE` comment or `name{labels} value`; returns the samples
/// as (`name{labels}`, value).
pub fn parse(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next()) {
                (Some("HELP" | "TYPE"), Some(name)) if valid_name(name) => continue,
                _ => return Err(bad("malformed comment")),
            }
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let name = series.split('{').next().unwrap_or_default();
        if !valid_name(name) {
            return Err(bad("bad metric name"));
        }
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .ok_or_else(|| bad("bad label braces"))?;
            if !labels_ok(inner) {
                return Err(bad("bad labels"));
            }
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse::<f64>().map_err(|_| bad("bad value"))?,
        };
        samples.push((series.to_owned(), value));
    }
    Ok(samples)
}

/// `name="value",...` with escaped values.
fn labels_ok(mut s: &str) -> bool {
    while !s.is_empty() {
        let Some((name, rest)) = s.split_once("=\"") else {
            return false;
        };
        if !valid_name(name) || name.contains(':') {
            return false;
        }
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if !matches!(chars.next(), Some((_, '\\' | '"' | 'n'))) => return false,
                '\\' => {}
                '"' => {
                    end = Some(i);
                    break;
                }
                '\n' => return false,
                _ => {}
            }
        }
        let Some(end) = end else {
            return false;
        };
        s = &rest[end + 1..];
        if let Some(next) = s.strip_prefix(',') {
            s = next;
        } else if !s.is_empty() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_refuses_what_a_scraper_would() {
        for bad in [
            "ferry_x",
            "ferry x 1",
            "9ferry 1",
            "ferry{a=\"1\" 1",
            "ferry{a=1} 1",
            "ferry{a=\"\\q\"} 1",
            "ferry 1e",
            "# NOTE something",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let samples = parse("ferry{a=\"x,y\",b=\"\"} +Inf\n\n# TYPE ferry gauge\nf 2\n").unwrap();
        assert_eq!(value(&samples, "f"), Some(2.0));
        assert_eq!(
            value(&samples, "ferry{a=\"x,y\",b=\"\"}"),
            Some(f64::INFINITY)
        );
    }
}
