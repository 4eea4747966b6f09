//! A YAML tree that keeps the position of every node, so validation errors can
//! name the file, line and column. serde-based YAML crates lose positions after
//! deserialising; we need them for every problem, not just the first parse error.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column of a node in the inventory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        // yaml-rust2 reports 1-based lines and 0-based columns.
        Pos { line: m.line(), col: m.col() + 1 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A scalar with its text and whether it was quoted (a quoted `"true"` is a string).
    Scalar {
        value: String,
        quoted: bool,
        pos: Pos,
    },
    Seq {
        items: Vec<Node>,
        pos: Pos,
    },
    /// Keys keep their own positions so "unknown key" points at the key.
    Map {
        entries: Vec<(String, Pos, Node)>,
        pos: Pos,
    },
}

impl Node {
    pub fn pos(&self) -> Pos {
        match self {
            Node::Scalar { pos, .. } | Node::Seq { pos, .. } | Node::Map { pos, .. } => *pos,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { value, quoted, .. } if !quoted && is_null(value) => "null",
            Node::Scalar { .. } => "a scalar",
            Node::Seq { .. } => "a list",
            Node::Map { .. } => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, quoted: false, .. } if is_null(value))
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: Vec<(usize, Node)>,
    error: Option<SyntaxError>,
}

enum Frame {
    Seq { items: Vec<Node>, pos: Pos, anchor: usize },
    Map { entries: Vec<(String, Pos, Node)>, pending_key: Option<(String, Pos)>, pos: Pos, anchor: usize },
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, pending_key, .. }) => match pending_key.take() {
                Some((k, kpos)) => entries.push((k, kpos, node)),
                None => match node {
                    Node::Scalar { value, pos, .. } => *pending_key = Some((value, pos)),
                    other => {
                        if self.error.is_none() {
                            self.error = Some(SyntaxError {
                                pos: other.pos(),
                                message: "mapping keys must be plain scalars".into(),
                            });
                        }
                        *pending_key = Some((String::new(), other.pos()));
                    }
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let quoted = !matches!(style, yaml_rust2::scanner::TScalarStyle::Plain);
                self.push_node(Node::Scalar { value, quoted, pos }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq { items: vec![], pos, anchor }),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map { entries: vec![], pending_key: None, pos, anchor })
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq { items, pos, anchor }) => self.push_node(Node::Seq { items, pos }, anchor),
                Some(Frame::Map { entries, pos, anchor, .. }) => {
                    self.push_node(Node::Map { entries, pos }, anchor)
                }
                None => {}
            },
            Event::Alias(id) => {
                let node = self.anchors.iter().rev().find(|(a, _)| *a == id).map(|(_, n)| n.clone());
                match node {
                    Some(n) => self.push_node(n, 0),
                    None => {
                        if self.error.is_none() {
                            self.error = Some(SyntaxError { pos, message: "unknown alias".into() });
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Parses one YAML document into a positioned tree. An empty document is `None`.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, false)
        .map_err(|e| SyntaxError { pos: Pos::from(*e.marker()), message: e.info().to_string() })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root)
}
