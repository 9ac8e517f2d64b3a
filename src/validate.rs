//! Checks on names and selectors, made before any request so bad input changes nothing.

/// A DNS-1123 label: namespaces.
pub fn dns_label(what: &str, value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!("{what} {value:?} is longer than 63 characters"));
    }
    if !is_label(value) {
        return Err(format!(
            "{what} {value:?} is not a valid DNS-1123 label: use lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: claims, storage classes.
pub fn dns_subdomain(what: &str, value: &str) -> Result<(), String> {
    if value.len() > 253 {
        return Err(format!("{what} {value:?} is longer than 253 characters"));
    }
    if !is_subdomain(value) {
        return Err(format!(
            "{what} {value:?} is not a valid DNS-1123 subdomain: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn is_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !bytes.is_empty()
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || *b == b'-')
}

fn is_subdomain(value: &str) -> bool {
    value.split('.').all(is_label)
}

/// A label selector in the syntax `kubectl -l` accepts: `key`, `!key`, `key=value`, `key==value`,
/// `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`, joined by commas.
pub fn label_selector(selector: &str) -> Result<(), String> {
    let fail = |detail: String| Err(format!("invalid label selector {selector:?}: {detail}"));
    let requirements = split_requirements(selector);
    if requirements.iter().any(|r| r.trim().is_empty()) {
        return fail("empty requirement between commas".into());
    }
    for requirement in requirements {
        if let Err(detail) = requirement_ok(requirement.trim()) {
            return fail(detail);
        }
    }
    Ok(())
}

fn split_requirements(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

fn requirement_ok(requirement: &str) -> Result<(), String> {
    if let Some(key) = requirement.strip_prefix('!') {
        return label_key(key.trim());
    }
    let key_end = requirement
        .find(|c: char| c.is_whitespace() || "=!<>()".contains(c))
        .unwrap_or(requirement.len());
    let (key, rest) = requirement.split_at(key_end);
    label_key(key)?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Ok(());
    }
    for op in ["==", "!=", "=", ">", "<"] {
        if let Some(value) = rest.strip_prefix(op) {
            let value = value.trim();
            if op == ">" || op == "<" {
                return value
                    .parse::<i64>()
                    .map(drop)
                    .map_err(|_| format!("{key}{op}{value}: the value must be an integer"));
            }
            return label_value(value);
        }
    }
    for op in ["notin", "in"] {
        if let Some(list) = rest.strip_prefix(op) {
            let list = list.trim();
            let Some(inner) = list.strip_prefix('(').and_then(|l| l.strip_suffix(')')) else {
                return Err(format!(
                    "{key} {op}: expected a list of values in parentheses"
                ));
            };
            return inner.split(',').map(str::trim).try_for_each(label_value);
        }
    }
    Err(format!(
        "{requirement:?}: expected an operator (=, ==, !=, in, notin) after the key"
    ))
}

fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.len() > 253 || !is_subdomain(prefix))
    {
        return Err(format!("label key {key:?} has an invalid prefix"));
    }
    if name.is_empty() || name.len() > 63 || !is_label_name(name) {
        return Err(format!(
            "label key {key:?} is invalid: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label's value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a
/// letter or digit; or empty.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_name(value)) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is invalid: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_label_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    let edge = |b: &u8| b.is_ascii_alphanumeric();
    bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes.iter().all(|b| edge(b) || b"-_.".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        for ok in ["a", "data-0", "0abc", &"a".repeat(63)] {
            assert!(dns_label("namespace", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(dns_label("namespace", bad).is_err(), "{bad}");
        }
        for ok in ["a.b", "fast-ssd", "ebs.csi.aws.com"] {
            assert!(dns_subdomain("claim name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "Data", "a b", &"a".repeat(254)] {
            assert!(dns_subdomain("claim name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_names_what_and_value() {
        let message = dns_subdomain("claim name", "Bad_Name").unwrap_err();
        assert!(message.starts_with("claim name \"Bad_Name\" is not a valid DNS-1123 subdomain"));
    }

    #[test]
    fn selectors() {
        for ok in [
            "app=web",
            "app==web",
            "app!=web",
            "app",
            "!app",
            "app in (web, db)",
            "tier notin (a,b),app=web",
            "example.com/role=data",
            "app=",
            "size>3",
        ] {
            assert!(label_selector(ok).is_ok(), "{ok}");
        }
        for bad in [
            "app=web,",
            "=web",
            "app=we b",
            "app in web",
            "app=-web",
            "Bad Key=1",
            "app ~ web",
            "size>x",
            "example..com/a=b",
        ] {
            assert!(label_selector(bad).is_err(), "{bad}");
        }
    }
}
