//! Dotted-path access to a TOML document, for the config properties of the
//! agent and the controller (the controller's checks include this file by path).

/// The value at a dotted path (`a.b`, `pairs.0.id`) of a TOML document.
pub fn get_path<'v>(doc: &'v mut toml::Value, path: &str) -> Option<&'v mut toml::Value> {
    let mut at = doc;
    for part in path.split('.') {
        at = match at {
            toml::Value::Table(t) => t.get_mut(part)?,
            toml::Value::Array(a) => a.get_mut(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Set the value at a dotted path, creating tables on the way.
pub fn set_path(doc: &mut toml::Value, path: &str, v: toml::Value) {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let mut at = doc;
    if let Some(p) = parent {
        for part in p.split('.') {
            at = match at {
                toml::Value::Table(t) => t
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(Default::default())),
                toml::Value::Array(a) => &mut a[part.parse::<usize>().expect("array index")],
                other => panic!("{path}: {other:?} is not a table"),
            };
        }
    }
    match at {
        toml::Value::Table(t) => {
            t.insert(last.to_string(), v);
        }
        toml::Value::Array(a) => a[last.parse::<usize>().expect("array index")] = v,
        other => panic!("{path}: {other:?} is not a table"),
    }
}
