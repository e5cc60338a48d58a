//! Parser for `drbdsetup show [RES] [--show-defaults]` output (DRBD 9): the
//! configuration the kernel runs with, as nested `name { key value; }` blocks.
//!
//! ```text
//! resource "r0" {
//!     options {
//!         quorum              majority;
//!     }
//!     _this_host {
//!         node-id         0;
//!         volume 0 { device minor 1; disk "/dev/vdb"; meta-disk internal; }
//!     }
//!     connection {
//!         _peer_node_id 1;
//!         path {
//!             _this_host ipv4 10.1.1.31:7000;
//!             _remote_host ipv4 10.1.1.32:7000;
//!         }
//!         _cstate Connected;
//!         net {
//!             timeout             60; # 1/10 seconds, default
//!             ping-int            10; # seconds, default
//!             fencing             resource-and-stonith;
//!             _name               "fs2";
//!         }
//!     }
//! }
//! ```
//!
//! drbd-utils 9 prints each option as `%-16s\t%s;` followed, when the option
//! has a unit or holds DRBD's default, by ` # UNIT`, ` # default` or
//! ` # UNIT, default`; DRBD 8 printed `VALUE _is_default; # UNIT`. Both forms
//! are read. Without `--show-defaults` options at their default are not
//! printed at all, so their fields stay `None`.
//!
//! Units of the time options ([`NetOptions`] holds milliseconds): `ping-int`
//! and `connect-int` are in seconds, `ping-timeout` and `timeout` in tenths of
//! a second (drbd.conf(5)). A recognised unit comment (`seconds`,
//! `1/10 seconds`, `milliseconds`) takes precedence over those defaults.
//!
//! Every key of `net` that is not typed here is kept in [`NetOptions::other`].
//! Malformed input (unbalanced braces, a statement without `;`, an unterminated
//! string, a time option that is not a number, nesting deeper than
//! [`MAX_DEPTH`]) is a [`ShowError`] naming the 1-based line; the parser never
//! panics and never recurses (an iterative stack).

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

/// What is wrong with `drbdsetup show` output, or why it lacks what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShowError {
    /// A `"` string is not closed on its line.
    #[error("line {line_no}: unterminated string in {line:?}")]
    UnterminatedString { line_no: usize, line: String },

    /// A `}` with no open block.
    #[error("line {line_no}: `}}` closes no block in {line:?}")]
    UnexpectedClose { line_no: usize, line: String },

    /// A `{` or `;` with nothing before it.
    #[error("line {line_no}: {token:?} without a key or block name before it in {line:?}")]
    MissingName {
        line_no: usize,
        line: String,
        token: char,
    },

    /// Words of a statement that are not ended by `;` before a `}` or the end.
    #[error("line {line_no}: statement not ended by `;` in {line:?}")]
    MissingSemicolon { line_no: usize, line: String },

    /// The text ended with blocks still open (the innermost is named).
    #[error("line {line_no}: block {block:?} opened here is never closed (truncated output?) in {line:?}")]
    Unclosed {
        line_no: usize,
        line: String,
        block: String,
    },

    /// Blocks nested deeper than [`MAX_DEPTH`] (drbdsetup nests 4 deep).
    #[error("line {line_no}: blocks nested deeper than {MAX_DEPTH} in {line:?}")]
    TooDeep { line_no: usize, line: String },

    /// A time option or id whose value is not a (representable) number.
    #[error("line {line_no}: {key} needs a whole number, got {value:?} in {line:?}")]
    InvalidNumber {
        line_no: usize,
        line: String,
        key: String,
        value: String,
    },

    /// The output has no `resource` block of that name.
    #[error("resource {resource:?} is not in the output (found: {})", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    ResourceNotFound {
        resource: String,
        found: Vec<String>,
    },

    /// The resource has no `connection` block (no peer configured).
    #[error("resource {resource:?} has no connection (no peer is configured)")]
    NoConnection { resource: String },
}

/// The deepest block nesting accepted; real output nests 4 deep
/// (`resource` / `_this_host` / `volume` / `disk`).
pub const MAX_DEPTH: usize = 16;

/// The `net` options of one connection, times in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// `ping-int`: idle time before a keep-alive ping (DRBD default 10 s).
    pub ping_int_ms: Option<u64>,
    /// `ping-timeout`: how long the peer has to answer a ping (default 500 ms).
    pub ping_timeout_ms: Option<u64>,
    /// `connect-int`: wait between connection attempts (default 10 s).
    pub connect_int_ms: Option<u64>,
    /// `timeout`: how long the peer has to answer a data packet (default 6 s).
    pub timeout_ms: Option<u64>,
    /// `protocol` (`A`, `B` or `C`).
    pub protocol: Option<String>,
    /// `fencing` (`dont-care`, `resource-only`, `resource-and-stonith`).
    pub fencing: Option<String>,
    /// Keys DRBD marked as holding its default value.
    pub defaults: BTreeSet<String>,
    /// Every other `net` key, its value as printed (quotes removed, a `_name`
    /// included).
    pub other: BTreeMap<String, String>,
}

/// One `path` of a connection: `ipv4 10.1.1.31:7000` and its peer's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShowPath {
    pub this_host: String,
    pub remote_host: String,
}

/// One `connection` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShowConnection {
    /// `_peer_node_id`.
    pub peer_node_id: Option<u32>,
    /// `_name` in `net`: the peer's host name.
    pub name: Option<String>,
    /// `_cstate`, printed by recent drbd-utils.
    pub cstate: Option<String>,
    pub paths: Vec<ShowPath>,
    pub net: NetOptions,
}

/// One `resource` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShowResource {
    pub name: String,
    /// `node-id` of `_this_host`.
    pub node_id: Option<u32>,
    /// The resource `options` block, values as printed.
    pub options: BTreeMap<String, String>,
    /// In the order printed (drbdsetup sorts them by connection name).
    pub connections: Vec<ShowConnection>,
}

/// Parse the whole output: every resource, in order. No resource at all (DRBD
/// prints `# No currently configured DRBD found.`) is an empty list.
pub fn parse_show(text: &str) -> Result<Vec<ShowResource>, ShowError> {
    let lines: Vec<&str> = text.lines().collect();
    let root = parse_tree(&lines)?;
    let mut out = Vec::new();
    for node in root {
        if let Node::Block {
            header,
            line_no,
            items,
        } = node
        {
            if header.first().map(String::as_str) == Some("resource") {
                out.push(resource(&lines, &header, line_no, items)?);
            }
        }
    }
    Ok(out)
}

/// The net options of `resource`'s first connection (a pair has one).
pub fn net_options(text: &str, resource: &str) -> Result<NetOptions, ShowError> {
    let resources = parse_show(text)?;
    let found: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
    let r = resources
        .into_iter()
        .find(|r| r.name == resource)
        .ok_or_else(|| ShowError::ResourceNotFound {
            resource: resource.to_owned(),
            found,
        })?;
    r.connections
        .into_iter()
        .next()
        .map(|c| c.net)
        .ok_or_else(|| ShowError::NoConnection {
            resource: resource.to_owned(),
        })
}

// ------------------------------------------------------------------ tree ---

/// A statement (`key value...;`, with the comment after it on its line) or a
/// block (`header... { items }`).
#[derive(Debug)]
enum Node {
    Stmt {
        words: Vec<String>,
        comment: Option<String>,
        line_no: usize,
    },
    Block {
        header: Vec<String>,
        line_no: usize,
        items: Vec<Node>,
    },
}

enum Token {
    Word(String),
    Open,
    Close,
    Semi,
    Comment(String),
}

/// Split one line into tokens; a quoted string is one word without its quotes.
fn tokenize(line: &str, line_no: usize) -> Result<Vec<Token>, ShowError> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '{' => out.push(Token::Open),
            '}' => out.push(Token::Close),
            ';' => out.push(Token::Semi),
            '#' => {
                out.push(Token::Comment(line[i + 1..].trim().to_owned()));
                break;
            }
            '"' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                s.push(n);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => s.push(c),
                    }
                }
                if !closed {
                    return Err(ShowError::UnterminatedString {
                        line_no,
                        line: line.trim().to_owned(),
                    });
                }
                out.push(Token::Word(s));
            }
            _ => {
                let mut end = line.len();
                while let Some(&(j, n)) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '#' | '"') {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                out.push(Token::Word(line[i..end].to_owned()));
            }
        }
    }
    Ok(out)
}

/// Build the block tree with an explicit stack.
fn parse_tree(lines: &[&str]) -> Result<Vec<Node>, ShowError> {
    let at = |line_no: usize| lines[line_no - 1].trim().to_owned();
    // (header, line of the `{`, items so far); the root has no header.
    let mut stack: Vec<(Vec<String>, usize, Vec<Node>)> = vec![(Vec::new(), 0, Vec::new())];
    let mut pending: Vec<String> = Vec::new();
    let mut pending_line = 0usize;
    for (i, line) in lines.iter().enumerate() {
        let line_no = i + 1;
        // A comment belongs to a statement ended by `;` on the same line.
        let mut ended_here = false;
        for tok in tokenize(line, line_no)? {
            match tok {
                Token::Word(w) => {
                    if pending.is_empty() {
                        pending_line = line_no;
                    }
                    pending.push(w);
                    ended_here = false;
                }
                Token::Semi => {
                    if pending.is_empty() {
                        return Err(ShowError::MissingName {
                            line_no,
                            line: at(line_no),
                            token: ';',
                        });
                    }
                    let top = &mut stack.last_mut().expect("root frame").2;
                    top.push(Node::Stmt {
                        words: std::mem::take(&mut pending),
                        comment: None,
                        line_no: pending_line,
                    });
                    ended_here = true;
                }
                Token::Comment(text) => {
                    if ended_here {
                        if let Some(Node::Stmt { comment, .. }) =
                            stack.last_mut().expect("root frame").2.last_mut()
                        {
                            *comment = Some(text);
                        }
                    }
                }
                Token::Open => {
                    if pending.is_empty() {
                        return Err(ShowError::MissingName {
                            line_no,
                            line: at(line_no),
                            token: '{',
                        });
                    }
                    if stack.len() > MAX_DEPTH {
                        return Err(ShowError::TooDeep {
                            line_no,
                            line: at(line_no),
                        });
                    }
                    stack.push((std::mem::take(&mut pending), line_no, Vec::new()));
                    ended_here = false;
                }
                Token::Close => {
                    if !pending.is_empty() {
                        return Err(ShowError::MissingSemicolon {
                            line_no: pending_line,
                            line: at(pending_line),
                        });
                    }
                    if stack.len() == 1 {
                        return Err(ShowError::UnexpectedClose {
                            line_no,
                            line: at(line_no),
                        });
                    }
                    let (header, open_line, items) = stack.pop().expect("checked above");
                    stack.last_mut().expect("root frame").2.push(Node::Block {
                        header,
                        line_no: open_line,
                        items,
                    });
                    ended_here = false;
                }
            }
        }
    }
    if !pending.is_empty() {
        return Err(ShowError::MissingSemicolon {
            line_no: pending_line,
            line: at(pending_line),
        });
    }
    if stack.len() > 1 {
        let (header, line_no, _) = stack.pop().expect("checked above");
        return Err(ShowError::Unclosed {
            line_no,
            line: at(line_no),
            block: header.join(" "),
        });
    }
    Ok(stack.pop().map(|(_, _, items)| items).unwrap_or_default())
}

// ------------------------------------------------------------ interpret ---

/// A statement's value: its words after the key, without a DRBD 8
/// `_is_default` marker, and whether DRBD marked it as its default.
fn value_of(words: &[String], comment: Option<&str>) -> (String, bool) {
    let mut vals: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let mut default = false;
    if vals.last() == Some(&"_is_default") {
        vals.pop();
        default = true;
    }
    if let Some(c) = comment {
        default |= c.split(',').any(|p| p.trim() == "default");
    }
    (vals.join(" "), default)
}

/// Milliseconds per unit named in a comment such as `1/10 seconds, default`.
fn comment_unit_ms(comment: Option<&str>) -> Option<u64> {
    let unit = comment?.split(',').next()?.trim();
    match unit {
        "seconds" | "second" | "s" => Some(1000),
        "1/10 seconds" | "1/10 second" => Some(100),
        "milliseconds" | "ms" => Some(1),
        _ => None,
    }
}

fn number(
    lines: &[&str],
    line_no: usize,
    key: &str,
    value: &str,
    scale: u64,
) -> Result<u64, ShowError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| ShowError::InvalidNumber {
            line_no,
            line: lines[line_no - 1].trim().to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        })
}

fn id(lines: &[&str], line_no: usize, key: &str, value: &str) -> Result<u32, ShowError> {
    let n = number(lines, line_no, key, value, 1)?;
    u32::try_from(n).map_err(|_| ShowError::InvalidNumber {
        line_no,
        line: lines[line_no - 1].trim().to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

fn resource(
    lines: &[&str],
    header: &[String],
    line_no: usize,
    items: Vec<Node>,
) -> Result<ShowResource, ShowError> {
    let name = header
        .get(1)
        .cloned()
        .ok_or_else(|| ShowError::MissingName {
            line_no,
            line: lines[line_no - 1].trim().to_owned(),
            token: '{',
        })?;
    let mut r = ShowResource {
        name,
        ..Default::default()
    };
    for node in items {
        let Node::Block { header, items, .. } = node else {
            continue;
        };
        match header[0].as_str() {
            "options" => {
                for n in items {
                    if let Node::Stmt { words, comment, .. } = n {
                        let (v, _) = value_of(&words, comment.as_deref());
                        r.options.insert(words[0].clone(), v);
                    }
                }
            }
            "_this_host" => {
                for n in items {
                    if let Node::Stmt {
                        words,
                        comment,
                        line_no,
                    } = n
                    {
                        if words[0] == "node-id" {
                            let (v, _) = value_of(&words, comment.as_deref());
                            r.node_id = Some(id(lines, line_no, "node-id", &v)?);
                        }
                    }
                }
            }
            "connection" => r.connections.push(connection(lines, items)?),
            _ => {}
        }
    }
    Ok(r)
}

fn connection(lines: &[&str], items: Vec<Node>) -> Result<ShowConnection, ShowError> {
    let mut c = ShowConnection::default();
    for node in items {
        match node {
            Node::Stmt {
                words,
                comment,
                line_no,
            } => {
                let (v, _) = value_of(&words, comment.as_deref());
                match words[0].as_str() {
                    "_peer_node_id" => {
                        c.peer_node_id = Some(id(lines, line_no, "_peer_node_id", &v)?)
                    }
                    "_cstate" => c.cstate = Some(v),
                    _ => {}
                }
            }
            Node::Block { header, items, .. } => match header[0].as_str() {
                "path" => {
                    let mut p = ShowPath::default();
                    for n in items {
                        if let Node::Stmt { words, comment, .. } = n {
                            let (v, _) = value_of(&words, comment.as_deref());
                            match words[0].as_str() {
                                "_this_host" => p.this_host = v,
                                "_remote_host" => p.remote_host = v,
                                _ => {}
                            }
                        }
                    }
                    c.paths.push(p);
                }
                "net" => {
                    c.net = net(lines, items)?;
                    c.name = c.net.other.get("_name").cloned();
                }
                _ => {}
            },
        }
    }
    Ok(c)
}

fn net(lines: &[&str], items: Vec<Node>) -> Result<NetOptions, ShowError> {
    let mut o = NetOptions::default();
    for node in items {
        let Node::Stmt {
            words,
            comment,
            line_no,
        } = node
        else {
            continue;
        };
        let key = words[0].clone();
        let (v, default) = value_of(&words, comment.as_deref());
        let unit = comment_unit_ms(comment.as_deref());
        let time =
            |default_unit: u64| number(lines, line_no, &key, &v, unit.unwrap_or(default_unit));
        match key.as_str() {
            "ping-int" => o.ping_int_ms = Some(time(1000)?),
            "ping-timeout" => o.ping_timeout_ms = Some(time(100)?),
            "connect-int" => o.connect_int_ms = Some(time(1000)?),
            "timeout" => o.timeout_ms = Some(time(100)?),
            "protocol" => o.protocol = Some(v),
            "fencing" => o.fencing = Some(v),
            _ => {
                o.other.insert(key.clone(), v);
            }
        }
        if default {
            o.defaults.insert(key);
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "resource r0 {\n    options {\n        quorum majority;\n    }\n    _this_host {\n        node-id 0;\n        volume 0 {\n            device minor 1;\n            disk \"/dev/vdb\";\n            meta-disk internal;\n        }\n    }\n    connection {\n        _peer_node_id 1;\n        path {\n            _this_host ipv4 10.1.1.31:7000;\n            _remote_host ipv4 10.1.1.32:7000;\n        }\n        net {\n            ping-int 10; # _is_default\n            ping-timeout 5 _is_default; # 1/10 seconds\n            connect-int 3; # seconds\n            timeout 60; # 1/10 seconds, default\n            protocol C;\n            fencing resource-and-stonith;\n            max-buffers 8000;\n            _name \"fs2\";\n        }\n    }\n}\n";

    #[test]
    fn reads_units_defaults_and_unknown_keys() {
        let rs = parse_show(SAMPLE).unwrap();
        assert_eq!(rs.len(), 1);
        let r = &rs[0];
        assert_eq!(r.name, "r0");
        assert_eq!(r.node_id, Some(0));
        assert_eq!(r.options["quorum"], "majority");
        let c = &r.connections[0];
        assert_eq!(c.peer_node_id, Some(1));
        assert_eq!(c.name.as_deref(), Some("fs2"));
        assert_eq!(c.paths[0].remote_host, "ipv4 10.1.1.32:7000");
        let n = &c.net;
        assert_eq!(n.ping_int_ms, Some(10_000));
        assert_eq!(n.ping_timeout_ms, Some(500));
        assert_eq!(n.connect_int_ms, Some(3_000));
        assert_eq!(n.timeout_ms, Some(6_000));
        assert_eq!(n.protocol.as_deref(), Some("C"));
        assert_eq!(n.fencing.as_deref(), Some("resource-and-stonith"));
        assert_eq!(n.other["max-buffers"], "8000");
        assert!(n.defaults.contains("ping-timeout") && n.defaults.contains("timeout"));
        assert!(!n.defaults.contains("connect-int"));
        assert_eq!(net_options(SAMPLE, "r0").unwrap(), *n);
    }

    #[test]
    fn a_unit_comment_overrides_the_documented_unit() {
        let t = "resource r0 { connection { net { ping-timeout 700; # milliseconds\n } } }";
        assert_eq!(net_options(t, "r0").unwrap().ping_timeout_ms, Some(700));
    }

    #[test]
    fn missing_resource_or_connection_is_typed() {
        assert_eq!(
            parse_show("# No currently configured DRBD found.\n"),
            Ok(vec![])
        );
        assert!(matches!(
            net_options(SAMPLE, "r1"),
            Err(ShowError::ResourceNotFound { ref found, .. }) if found == &["r0".to_string()]
        ));
        assert_eq!(
            net_options("resource r0 {\n}\n", "r0"),
            Err(ShowError::NoConnection {
                resource: "r0".into()
            })
        );
    }
}
