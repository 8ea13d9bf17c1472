//! A recogniser for the CQL statement forms the scylla driver, scylla-cdc and `live::scylla`
//! send: `SELECT`, `INSERT`, `UPDATE`, `CREATE`, `USE`, with bind markers, literals,
//! `minTimeuuid(…)`, `IN ?`, `ORDER BY`, `LIMIT`, `ALLOW FILTERING`, `BYPASS CACHE`,
//! `USING TIMEOUT|TTL|TIMESTAMP`. It is a grammar for that subset, not a table of exact texts,
//! so whitespace, quoting, case and clause order that CQL allows do not matter.

use std::fmt;

/// A token of CQL text.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// An identifier or keyword; `quoted` keeps case.
    Ident { text: String, quoted: bool },
    /// A string literal.
    Str(String),
    /// A number (integer or with a unit suffix such as `30000ms`).
    Num(String),
    /// A hex blob literal `0x…`.
    Blob(Vec<u8>),
    /// `?`.
    Bind,
    /// Punctuation: `( ) , . ; * = < > <= >= { } :`.
    Punct(&'static str),
}

/// Why a statement was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a `q`-quoted token starting at byte `start` (a doubled `q` is one `q`), and the
/// byte after its closing quote.
fn quoted(s: &str, start: usize, q: char) -> Result<(String, usize), ParseError> {
    let mut text = String::new();
    let mut chars = s[start + 1..].char_indices().peekable();
    while let Some((j, c)) = chars.next() {
        if c != q {
            text.push(c);
        } else if chars.peek().is_some_and(|(_, n)| *n == q) {
            text.push(q);
            chars.next();
        } else {
            return Ok((text, start + 1 + j + 1));
        }
    }
    Err(ParseError(if q == '"' {
        "unterminated quoted identifier".into()
    } else {
        "unterminated string literal".into()
    }))
}

fn lex(s: &str) -> Result<Vec<Tok>, ParseError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'"' => {
                let (text, end) = quoted(s, i, '"')?;
                out.push(Tok::Ident { text, quoted: true });
                i = end;
            }
            b'\'' => {
                let (text, end) = quoted(s, i, '\'')?;
                out.push(Tok::Str(text));
                i = end;
            }
            b'0' if matches!(b.get(i + 1), Some(b'x' | b'X')) => {
                let mut j = i + 2;
                while j < b.len() && b[j].is_ascii_hexdigit() {
                    j += 1;
                }
                let hex = &s[i + 2..j];
                if !hex.len().is_multiple_of(2) {
                    return Err(ParseError(format!("odd-length blob literal 0x{hex}")));
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(&hex[k..k + 2], 16))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ParseError(format!("bad blob literal 0x{hex}")))?;
                out.push(Tok::Blob(bytes));
                i = j;
            }
            b'0'..=b'9' | b'-' if c != b'-' || b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.') {
                    j += 1;
                }
                out.push(Tok::Num(s[i..j].to_string()));
                i = j;
            }
            b'?' => {
                out.push(Tok::Bind);
                i += 1;
            }
            b'<' | b'>' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Punct(if c == b'<' { "<=" } else { ">=" }));
                i += 2;
            }
            b'(' | b')' | b',' | b'.' | b';' | b'*' | b'=' | b'<' | b'>' | b'{' | b'}' | b':'
            | b'[' | b']' => {
                let p = match c {
                    b'(' => "(",
                    b')' => ")",
                    b',' => ",",
                    b'.' => ".",
                    b';' => ";",
                    b'*' => "*",
                    b'=' => "=",
                    b'<' => "<",
                    b'>' => ">",
                    b'{' => "{",
                    b'}' => "}",
                    b':' => ":",
                    b'[' => "[",
                    _ => "]",
                };
                out.push(Tok::Punct(p));
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$')
                {
                    j += 1;
                }
                out.push(Tok::Ident {
                    text: s[i..j].to_ascii_lowercase(),
                    quoted: false,
                });
                i = j;
            }
            _ => {
                return Err(ParseError(format!(
                    "unexpected character {:?} at byte {i}",
                    s[i..].chars().next().unwrap_or('?')
                )));
            }
        }
    }
    Ok(out)
}

/// A value in a statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Term {
    /// The `n`-th bind marker (from 0).
    Bind(usize),
    /// A string literal.
    Str(String),
    /// A numeric literal.
    Num(i64),
    /// A blob literal.
    Blob(Vec<u8>),
    /// `minTimeuuid(term)`.
    MinTimeuuid(Box<Term>),
    /// `toTimestamp(now())` or `now()`: the server's time.
    Now,
    /// A collection or other literal the front does not evaluate.
    Opaque,
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `IN`
    In,
}

/// `column op term` in a WHERE clause.
#[derive(Clone, Debug, PartialEq)]
pub struct Cond {
    /// Column name.
    pub column: String,
    /// Operator.
    pub op: Op,
    /// Right-hand side.
    pub term: Term,
}

/// What a SELECT returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Projection {
    /// `*`
    All,
    /// `COUNT(*)`
    Count,
    /// Named columns.
    Columns(Vec<String>),
}

/// A recognised statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `SELECT`.
    Select {
        /// Keyspace (empty when unqualified).
        keyspace: String,
        /// Table.
        table: String,
        /// Columns.
        projection: Projection,
        /// WHERE conditions (conjunction).
        conds: Vec<Cond>,
        /// `ORDER BY … DESC`.
        descending: bool,
        /// `LIMIT n`.
        limit: Option<usize>,
    },
    /// `INSERT INTO t (cols) VALUES (terms)`.
    Insert {
        /// Keyspace.
        keyspace: String,
        /// Table.
        table: String,
        /// Column = value pairs.
        values: Vec<(String, Term)>,
    },
    /// `UPDATE t SET c = v, … WHERE …`.
    Update {
        /// Keyspace.
        keyspace: String,
        /// Table.
        table: String,
        /// Assignments.
        sets: Vec<(String, Term)>,
        /// WHERE conditions.
        conds: Vec<Cond>,
    },
    /// `CREATE KEYSPACE|TABLE …` (accepted; the schema is fixed).
    Create,
    /// `USE ks`.
    Use(String),
}

impl Statement {
    /// How many bind markers the statement has.
    pub fn bind_count(text: &str) -> usize {
        lex(text)
            .map(|t| t.iter().filter(|t| **t == Tok::Bind).count())
            .unwrap_or(0)
    }
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    binds: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident { text, quoted: false }) if text == kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.err(&format!("expected {}", kw.to_uppercase())))
        }
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Punct(q)) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), ParseError> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.err(&format!("expected '{p}'")))
        }
    }

    fn err(&self, what: &str) -> ParseError {
        ParseError(format!("{what} at token {} ({:?})", self.pos, self.peek()))
    }

    fn ident(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Some(Tok::Ident { text, .. }) => Ok(text),
            _ => {
                self.pos -= 1;
                Err(self.err("expected an identifier"))
            }
        }
    }

    fn table(&mut self) -> Result<(String, String), ParseError> {
        let a = self.ident()?;
        if self.eat(".") {
            Ok((a, self.ident()?))
        } else {
            Ok((String::new(), a))
        }
    }

    fn term(&mut self) -> Result<Term, ParseError> {
        match self.next() {
            Some(Tok::Bind) => {
                self.binds += 1;
                Ok(Term::Bind(self.binds - 1))
            }
            Some(Tok::Str(s)) => Ok(Term::Str(s)),
            Some(Tok::Num(n)) => {
                // A duration literal (`USING TIMEOUT 30000ms`) keeps its number; the unit only
                // matters to a real server's timeout.
                let digits = n.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let unit = &n[digits.len()..];
                if !matches!(unit, "" | "ms" | "s" | "us" | "ns" | "m" | "h" | "d") {
                    return Err(ParseError(format!("bad number {n}")));
                }
                digits
                    .parse()
                    .map(Term::Num)
                    .map_err(|_| ParseError(format!("bad number {n}")))
            }
            Some(Tok::Blob(b)) => Ok(Term::Blob(b)),
            Some(Tok::Ident {
                text,
                quoted: false,
            }) if self.eat("(") => {
                let inner = if self.eat(")") {
                    None
                } else {
                    let t = self.term()?;
                    self.expect(")")?;
                    Some(t)
                };
                match (text.as_str(), inner) {
                    ("mintimeuuid", Some(t)) => Ok(Term::MinTimeuuid(Box::new(t))),
                    ("now", None) => Ok(Term::Now),
                    ("totimestamp", Some(Term::Now)) => Ok(Term::Now),
                    (f, _) => Err(ParseError(format!("unsupported function {f}()"))),
                }
            }
            Some(Tok::Punct("{" | "[")) => {
                let mut depth = 1;
                while depth > 0 {
                    match self.next() {
                        Some(Tok::Punct("{" | "[")) => depth += 1,
                        Some(Tok::Punct("}" | "]")) => depth -= 1,
                        Some(Tok::Bind) => self.binds += 1,
                        Some(_) => {}
                        None => return Err(ParseError("unterminated collection literal".into())),
                    }
                }
                Ok(Term::Opaque)
            }
            Some(Tok::Ident { text, .. }) if text == "true" || text == "false" => {
                Ok(Term::Num(i64::from(text == "true")))
            }
            Some(Tok::Ident { text, .. }) if text == "null" => Ok(Term::Opaque),
            _ => {
                self.pos -= 1;
                Err(self.err("expected a value"))
            }
        }
    }

    fn conds(&mut self) -> Result<Vec<Cond>, ParseError> {
        let mut conds = Vec::new();
        if !self.eat_kw("where") {
            return Ok(conds);
        }
        loop {
            let column = self.ident()?;
            let op = if self.eat("=") {
                Op::Eq
            } else if self.eat("<=") {
                Op::Le
            } else if self.eat(">=") {
                Op::Ge
            } else if self.eat("<") {
                Op::Lt
            } else if self.eat(">") {
                Op::Gt
            } else if self.eat_kw("in") {
                Op::In
            } else {
                return Err(self.err("expected a comparison"));
            };
            let term = if op == Op::In && self.eat("(") {
                let mut n = 0;
                while !self.eat(")") {
                    self.term()?;
                    n += 1;
                    self.eat(",");
                    if self.peek().is_none() {
                        return Err(self.err("unterminated IN list"));
                    }
                }
                let _ = n;
                Term::Opaque
            } else {
                self.term()?
            };
            conds.push(Cond { column, op, term });
            if !self.eat_kw("and") {
                return Ok(conds);
            }
        }
    }

    /// `USING TIMEOUT x | TTL x | TIMESTAMP x [AND …]`, `BYPASS CACHE`, `ALLOW FILTERING`, `;`.
    fn trailer(&mut self) -> Result<(), ParseError> {
        loop {
            if self.eat_kw("using") {
                loop {
                    let _ = self.ident()?;
                    self.term()?;
                    if !self.eat_kw("and") {
                        break;
                    }
                }
            } else if self.eat_kw("bypass") {
                self.expect_kw("cache")?;
            } else if self.eat_kw("allow") {
                self.expect_kw("filtering")?;
            } else if self.eat(";") {
            } else if self.peek().is_none() {
                return Ok(());
            } else {
                return Err(self.err("unexpected trailing text"));
            }
        }
    }

    fn select(&mut self) -> Result<Statement, ParseError> {
        let projection = if self.eat("*") {
            Projection::All
        } else if self.is_kw("count") {
            self.next();
            self.expect("(")?;
            if !self.eat("*") {
                self.ident()?;
            }
            self.expect(")")?;
            Projection::Count
        } else {
            let mut cols = vec![self.ident()?];
            while self.eat(",") {
                cols.push(self.ident()?);
            }
            Projection::Columns(cols)
        };
        self.expect_kw("from")?;
        let (keyspace, table) = self.table()?;
        let conds = self.conds()?;
        let mut descending = false;
        if self.eat_kw("order") {
            self.expect_kw("by")?;
            self.ident()?;
            descending = self.eat_kw("desc");
            if !descending {
                self.eat_kw("asc");
            }
        }
        let mut limit = None;
        if self.eat_kw("limit") {
            limit = match self.term()? {
                Term::Num(n) if n >= 0 => Some(n as usize),
                _ => return Err(self.err("LIMIT needs a literal")),
            };
        }
        self.trailer()?;
        Ok(Statement::Select {
            keyspace,
            table,
            projection,
            conds,
            descending,
            limit,
        })
    }

    fn insert(&mut self) -> Result<Statement, ParseError> {
        self.expect_kw("into")?;
        let (keyspace, table) = self.table()?;
        self.expect("(")?;
        let mut cols = vec![self.ident()?];
        while self.eat(",") {
            cols.push(self.ident()?);
        }
        self.expect(")")?;
        self.expect_kw("values")?;
        self.expect("(")?;
        let mut terms = vec![self.term()?];
        while self.eat(",") {
            terms.push(self.term()?);
        }
        self.expect(")")?;
        if cols.len() != terms.len() {
            return Err(ParseError(format!(
                "{} columns but {} values",
                cols.len(),
                terms.len()
            )));
        }
        let _ = self.eat_kw("if") && self.eat_kw("not") && self.eat_kw("exists");
        self.trailer()?;
        Ok(Statement::Insert {
            keyspace,
            table,
            values: cols.into_iter().zip(terms).collect(),
        })
    }

    fn update(&mut self) -> Result<Statement, ParseError> {
        let (keyspace, table) = self.table()?;
        if self.eat_kw("using") {
            loop {
                let _ = self.ident()?;
                self.term()?;
                if !self.eat_kw("and") {
                    break;
                }
            }
        }
        self.expect_kw("set")?;
        let mut sets = Vec::new();
        loop {
            let c = self.ident()?;
            self.expect("=")?;
            sets.push((c, self.term()?));
            if !self.eat(",") {
                break;
            }
        }
        let conds = self.conds()?;
        self.trailer()?;
        Ok(Statement::Update {
            keyspace,
            table,
            sets,
            conds,
        })
    }
}

/// Recognises one statement.
pub fn parse(text: &str) -> Result<Statement, ParseError> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        binds: 0,
    };
    let verb = p
        .ident()
        .map_err(|_| ParseError("empty statement".into()))?;
    match verb.as_str() {
        "select" => p.select(),
        "insert" => p.insert(),
        "update" => p.update(),
        "create" => Ok(Statement::Create),
        "use" => Ok(Statement::Use(p.ident()?)),
        other => Err(ParseError(format!(
            "unsupported statement {}",
            other.to_uppercase()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_log_query_of_scylla_cdc() {
        let q = "SELECT * FROM \"orders_ks\".\"outbox_messages_scylla_cdc_log\" WHERE \"cdc$stream_id\" in ? AND \"cdc$time\" >= minTimeuuid(?) AND \"cdc$time\" < minTimeuuid(?)  BYPASS CACHE";
        let Statement::Select {
            keyspace,
            table,
            projection,
            conds,
            ..
        } = parse(q).unwrap()
        else {
            panic!("a select")
        };
        assert_eq!(
            (keyspace.as_str(), table.as_str()),
            ("orders_ks", "outbox_messages_scylla_cdc_log")
        );
        assert_eq!(projection, Projection::All);
        assert_eq!(conds.len(), 3);
        assert_eq!(conds[0].op, Op::In);
        assert_eq!(conds[0].term, Term::Bind(0));
        assert_eq!(conds[2].term, Term::MinTimeuuid(Box::new(Term::Bind(2))));
        assert_eq!(Statement::bind_count(q), 3);
    }

    #[test]
    fn recognises_control_queries_with_scylla_suffixes() {
        let q = "SELECT keyspace_name, table_name FROM system_schema.tables USING TIMEOUT 30000ms";
        assert!(matches!(parse(q).unwrap(), Statement::Select { .. }));
        let q = "SELECT time FROM system_distributed.cdc_generation_timestamps WHERE key = 'timestamps' AND time <= ? ORDER BY time DESC LIMIT 1;";
        let Statement::Select {
            descending, limit, ..
        } = parse(q).unwrap()
        else {
            panic!()
        };
        assert!(descending);
        assert_eq!(limit, Some(1));
        let q = "UPDATE \"ks\".\"checkpoints\" USING TTL 604800 SET generation = ?, time = ? WHERE stream_id = ?";
        let Statement::Update { sets, conds, .. } = parse(q).unwrap() else {
            panic!()
        };
        assert_eq!(sets[1], ("time".to_string(), Term::Bind(1)));
        assert_eq!(conds[0].term, Term::Bind(2));
    }

    #[test]
    fn unsupported_and_malformed_statements_are_errors_naming_the_problem() {
        assert!(parse("DROP TABLE x").unwrap_err().0.contains("DROP"));
        assert!(parse("SELECT * FROM").is_err());
        assert!(
            parse("SELECT 'unterminated")
                .unwrap_err()
                .0
                .contains("unterminated")
        );
        assert!(parse("").is_err());
    }
}
