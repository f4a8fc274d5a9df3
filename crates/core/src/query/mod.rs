//! The search query language: a small KQL-like syntax over named audit-event fields plus free text.
//!
//! ```text
//! query    := <whitespace only>                     -> Query::All
//!           | or_expr
//! or_expr  := and_expr ( "or" and_expr )*
//! and_expr := unary ( ["and"] unary )*              -- juxtaposition is an implicit `and`
//! unary    := ( "not" | "-" ) unary | primary
//! primary  := "(" or_expr ")" | field_expr | free_text
//! field_expr := FIELD ( ":" | "<" | "<=" | ">" | ">=" ) value
//! value    := "quoted"["*"] | raw["*"]              -- raw runs to whitespace or an unbalanced `)`
//! free_text := word | "quoted phrase"
//! ```
//!
//! Keywords and field names are matched ASCII-case-insensitively only: Unicode case folding would
//! let look-alikes such as the Kelvin sign (U+212A) turn into the field `k…` or the keyword `and`.
//!
//! The parser is a recursive descent that pulls tokens lazily, so the error it reports is the
//! leftmost one a reader would hit. Every recursion goes through a `(` or a `not`/`-`, both of
//! which count against [`MAX_DEPTH`] before recursing, so no input can exhaust the stack.

mod matcher;

use std::fmt;

pub use matcher::{matches, parse_matchable, required_values, role_ref};

/// A parsed search query. The stores evaluate it in their own indexes; [`matches`] evaluates it
/// on one event in memory, with the same answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// The empty query (only whitespace) matches everything.
    All,
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
    Field {
        field: Field,
        op: Op,
        value: Value,
    },
    /// Free text (a bare word, or "a quoted phrase" without a field): every word of it (a run of
    /// letters and digits) is a word of the request path or the object name, case-insensitively.
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    User,
    Group,
    Verb,
    Resource,
    Subresource,
    ApiGroup,
    Namespace,
    Name,
    Code,
    SourceIp,
    UserAgent,
    Stage,
    Level,
    Decision,
    Uri,
    AuditId,
    /// The username the request was made as (`kubectl --as`), when it impersonated someone.
    ImpersonatedUser,
    /// The role a RoleBinding or ClusterRoleBinding grants (`roleRef.name`), read from the
    /// event's bodies: only events logged at Request level or above carry it.
    RoleRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Exact(String),
    /// The value without its trailing `*`; `Prefix("")` (written `field:*`) means "field present".
    Prefix(String),
    Number(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ParseError {
    /// 1-based, counted in characters (not bytes); one past the last character for "at the end".
    pub column: usize,
    pub message: String,
}

/// Longest accepted query, in characters.
pub const MAX_QUERY_LEN: usize = 4096;
/// Deepest accepted nesting of parentheses and negations (`not`, `-`) combined.
pub const MAX_DEPTH: usize = 32;

impl Field {
    /// Every field, in the order the "known fields" list of an error names them.
    pub const ALL: [Field; 18] = [
        Field::User,
        Field::Group,
        Field::Verb,
        Field::Resource,
        Field::Subresource,
        Field::ApiGroup,
        Field::Namespace,
        Field::Name,
        Field::Code,
        Field::SourceIp,
        Field::UserAgent,
        Field::Stage,
        Field::Level,
        Field::Decision,
        Field::Uri,
        Field::AuditId,
        Field::ImpersonatedUser,
        Field::RoleRef,
    ];

    /// The canonical spelling, as `Display` of a query writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Field::User => "user",
            Field::Group => "group",
            Field::Verb => "verb",
            Field::Resource => "resource",
            Field::Subresource => "subresource",
            Field::ApiGroup => "apiGroup",
            Field::Namespace => "namespace",
            Field::Name => "name",
            Field::Code => "code",
            Field::SourceIp => "sourceIP",
            Field::UserAgent => "userAgent",
            Field::Stage => "stage",
            Field::Level => "level",
            Field::Decision => "decision",
            Field::Uri => "uri",
            Field::AuditId => "auditID",
            Field::ImpersonatedUser => "impersonatedUser",
            Field::RoleRef => "roleRef",
        }
    }

    /// Whether values are integers and comparisons (`<`, `>=`, ...) are allowed.
    pub fn is_numeric(&self) -> bool {
        matches!(self, Field::Code)
    }

    /// Looks up a canonical name or an alias, ASCII-case-insensitively.
    pub fn from_name(name: &str) -> Option<Field> {
        let field = match name.to_ascii_lowercase().as_str() {
            "user" => Field::User,
            "group" | "groups" => Field::Group,
            "verb" => Field::Verb,
            "resource" => Field::Resource,
            "subresource" => Field::Subresource,
            "apigroup" => Field::ApiGroup,
            "namespace" | "ns" => Field::Namespace,
            "name" => Field::Name,
            "code" | "status" => Field::Code,
            "sourceip" | "ip" => Field::SourceIp,
            "useragent" | "agent" | "ua" => Field::UserAgent,
            "stage" => Field::Stage,
            "level" => Field::Level,
            "decision" => Field::Decision,
            "uri" => Field::Uri,
            "auditid" | "id" => Field::AuditId,
            "impersonateduser" | "impersonated" => Field::ImpersonatedUser,
            "roleref" => Field::RoleRef,
            _ => return None,
        };
        Some(field)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Op {
    /// How the operator is written between a field and its value.
    pub fn symbol(&self) -> &'static str {
        match self {
            Op::Eq => ":",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// Parses a query. The empty (or all-whitespace) query is [`Query::All`].
pub fn parse(input: &str) -> Result<Query, ParseError> {
    // `nth` stops early, so an enormous input costs no more than the limit to reject.
    if input.chars().nth(MAX_QUERY_LEN).is_some() {
        return Err(error(
            1,
            format!("the query is longer than {MAX_QUERY_LEN} characters"),
        ));
    }
    let mut parser = Parser {
        chars: input.chars().collect(),
        pos: 0,
        peeked: None,
        depth: 0,
    };
    if matches!(parser.peek()?.kind, Kind::End) {
        return Ok(Query::All);
    }
    let query = parser.parse_or()?;
    let tok = parser.next()?;
    match tok.kind {
        Kind::End => Ok(query),
        // Everything else that can follow a complete expression is consumed by `parse_or`.
        _ => Err(error(tok.col, "unmatched `)`")),
    }
}

fn error(column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column,
        message: message.into(),
    }
}

#[derive(Debug)]
enum Kind {
    LParen,
    RParen,
    And,
    Or,
    /// `not` or a leading `-`.
    Not,
    Term(Query),
    End,
}

#[derive(Debug)]
struct Token {
    kind: Kind,
    col: usize,
    /// How error messages name this token.
    label: &'static str,
}

impl Token {
    fn starts_operand(&self) -> bool {
        matches!(self.kind, Kind::LParen | Kind::Not | Kind::Term(_))
    }

    fn describe(&self) -> String {
        match self.kind {
            Kind::End => "the end of the query".to_string(),
            Kind::Term(_) => "a term".to_string(),
            _ => format!("`{}`", self.label),
        }
    }
}

struct Parser {
    // Indexing characters rather than bytes keeps columns right for multi-byte input; the length
    // limit keeps the copy small.
    chars: Vec<char>,
    pos: usize,
    peeked: Option<Token>,
    depth: usize,
}

impl Parser {
    fn peek(&mut self) -> Result<&Token, ParseError> {
        if self.peeked.is_none() {
            let tok = self.lex()?;
            self.peeked = Some(tok);
        }
        Ok(self.peeked.as_ref().expect("filled above"))
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        match self.peeked.take() {
            Some(tok) => Ok(tok),
            None => self.lex(),
        }
    }

    fn parse_or(&mut self) -> Result<Query, ParseError> {
        let mut items = vec![self.parse_and()?];
        while matches!(self.peek()?.kind, Kind::Or) {
            let op = self.next()?;
            self.expect_operand_after(&op)?;
            items.push(self.parse_and()?);
        }
        Ok(combine(items, false))
    }

    fn parse_and(&mut self) -> Result<Query, ParseError> {
        let mut items = vec![self.parse_unary()?];
        loop {
            match self.peek()?.kind {
                Kind::And => {
                    let op = self.next()?;
                    self.expect_operand_after(&op)?;
                    items.push(self.parse_unary()?);
                }
                Kind::LParen | Kind::Not | Kind::Term(_) => items.push(self.parse_unary()?),
                _ => break,
            }
        }
        Ok(combine(items, true))
    }

    fn parse_unary(&mut self) -> Result<Query, ParseError> {
        if !matches!(self.peek()?.kind, Kind::Not) {
            return self.parse_primary();
        }
        let op = self.next()?;
        self.enter(op.col)?;
        self.expect_operand_after(&op)?;
        let inner = self.parse_unary()?;
        self.depth -= 1;
        Ok(Query::Not(Box::new(inner)))
    }

    fn parse_primary(&mut self) -> Result<Query, ParseError> {
        let tok = self.next()?;
        match tok.kind {
            Kind::Term(query) => Ok(query),
            Kind::LParen => {
                self.enter(tok.col)?;
                match self.peek()?.kind {
                    Kind::RParen => return Err(error(tok.col, "empty parentheses")),
                    Kind::End => return Err(error(tok.col, "unclosed `(`")),
                    _ => {}
                }
                let query = self.parse_or()?;
                // `parse_or` stops only before `)` or the end.
                if !matches!(self.next()?.kind, Kind::RParen) {
                    return Err(error(tok.col, "unclosed `(`"));
                }
                self.depth -= 1;
                Ok(query)
            }
            Kind::RParen => Err(error(tok.col, "unmatched `)`")),
            Kind::And | Kind::Or => Err(error(
                tok.col,
                format!("`{}` needs a term before it", tok.label),
            )),
            Kind::Not | Kind::End => Err(error(
                tok.col,
                format!("expected a term, found {}", tok.describe()),
            )),
        }
    }

    fn expect_operand_after(&mut self, op: &Token) -> Result<(), ParseError> {
        let next = self.peek()?;
        if next.starts_operand() {
            return Ok(());
        }
        Err(error(
            op.col,
            format!(
                "`{}` needs a term after it, found {}",
                op.label,
                next.describe()
            ),
        ))
    }

    fn enter(&mut self, col: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(error(
                col,
                format!("nesting deeper than {MAX_DEPTH} levels of parentheses and negations"),
            ));
        }
        Ok(())
    }

    fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    /// Whether a token may end just before index `i`.
    fn is_boundary(&self, i: usize) -> bool {
        match self.at(i) {
            None => true,
            Some(c) => c.is_whitespace() || c == '(' || c == ')',
        }
    }

    fn lex(&mut self) -> Result<Token, ParseError> {
        while self.at(self.pos).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let col = start + 1;
        let tok = |kind, label| Ok(Token { kind, col, label });
        let Some(c) = self.at(start) else {
            return tok(Kind::End, "");
        };
        match c {
            '(' => {
                self.pos += 1;
                tok(Kind::LParen, "(")
            }
            ')' => {
                self.pos += 1;
                tok(Kind::RParen, ")")
            }
            '-' => {
                // `- x` reads like a stray dash more than a negation, so it is rejected rather than
                // guessed at; the dash inside words (`kube-system`) never reaches here.
                let next = self.at(start + 1);
                if next.is_none_or(|n| n.is_whitespace() || n == ')') {
                    return Err(error(
                        col,
                        "`-` must be directly followed by the term it negates, as in `-user:alice`",
                    ));
                }
                self.pos += 1;
                tok(Kind::Not, "-")
            }
            '"' => {
                let (text, end) = self.quoted(start)?;
                if self.at(end) == Some('*') {
                    return Err(error(
                        end + 1,
                        "a wildcard needs a field, as in `name:\"web\"*`; free text already matches substrings",
                    ));
                }
                self.expect_separator(end)?;
                if text.is_empty() {
                    return Err(error(col, "empty quoted phrase"));
                }
                self.pos = end;
                tok(Kind::Term(Query::Text(text)), "")
            }
            _ => {
                for (word, kind, label) in [
                    ("and", Kind::And, "and"),
                    ("or", Kind::Or, "or"),
                    ("not", Kind::Not, "not"),
                ] {
                    let len = word.len();
                    let matches = start + len <= self.chars.len()
                        && self.chars[start..start + len]
                            .iter()
                            .zip(word.chars())
                            .all(|(a, b)| a.eq_ignore_ascii_case(&b));
                    if matches && self.is_boundary(start + len) {
                        self.pos = start + len;
                        return tok(kind, label);
                    }
                }
                let (query, end) = self.word(start)?;
                self.pos = end;
                tok(Kind::Term(query), "")
            }
        }
    }

    /// Reads a quoted string whose opening `"` is at `start`; returns it and the index after the
    /// closing quote.
    fn quoted(&self, start: usize) -> Result<(String, usize), ParseError> {
        let mut text = String::new();
        let mut i = start + 1;
        loop {
            match self.at(i) {
                None => return Err(error(start + 1, "unterminated quote")),
                Some('"') => return Ok((text, i + 1)),
                Some('\\') => match self.at(i + 1) {
                    Some(c @ ('"' | '\\')) => {
                        text.push(c);
                        i += 2;
                    }
                    None => return Err(error(start + 1, "unterminated quote")),
                    Some(c) => {
                        return Err(error(
                            i + 1,
                            format!("unknown escape `\\{c}`; only `\\\"` and `\\\\` are allowed"),
                        ));
                    }
                },
                Some(c) => {
                    text.push(c);
                    i += 1;
                }
            }
        }
    }

    /// After a quoted string (and its optional `*`), only a token boundary may follow: `"a"b` is
    /// more likely a typo than two terms.
    fn expect_separator(&self, i: usize) -> Result<(), ParseError> {
        match self.at(i) {
            Some(c) if !c.is_whitespace() && c != ')' => Err(error(
                i + 1,
                format!("unexpected `{c}` after a closing quote; separate terms with a space"),
            )),
            _ => Ok(()),
        }
    }

    /// Scans an unquoted run from `start` to whitespace, an unbalanced `)` or the end; returns the
    /// index where it stops. Parentheses inside are kept when balanced so URIs such as
    /// `/apis/x(y)` survive, while `(user:a)` still closes its group.
    fn raw_end(&self, start: usize) -> Result<usize, ParseError> {
        let mut depth = 0usize;
        let mut i = start;
        while let Some(c) = self.at(i) {
            match c {
                c if c.is_whitespace() => break,
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                '"' => {
                    return Err(error(
                        i + 1,
                        "unexpected `\"` inside a word; quote the whole value or phrase",
                    ));
                }
                _ => {}
            }
            i += 1;
        }
        Ok(i)
    }

    /// A bare word: free text, or a field expression if it holds an operator character.
    fn word(&self, start: usize) -> Result<(Query, usize), ParseError> {
        // The first `:`, `<`, `>` or `=` splits field from value, so values may contain colons
        // (`user:system:serviceaccount:ns:sa`). A word with one is never taken as free text:
        // `https://x` silently searching text would hide a mistyped field name.
        let mut depth = 0usize;
        let mut i = start;
        while let Some(c) = self.at(i) {
            match c {
                ':' | '<' | '>' | '=' => return self.field_expr(start, i),
                c if c.is_whitespace() => break,
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                '"' => {
                    return Err(error(
                        i + 1,
                        "unexpected `\"` inside a word; quote the whole value or phrase",
                    ));
                }
                _ => {}
            }
            i += 1;
        }
        let text = &self.chars[start..i];
        if text == ['*'] {
            return Err(error(
                start + 1,
                "a lone `*` is not a query; write `field:*` to require a field, or nothing to match everything",
            ));
        }
        if let Some(star) = text.iter().position(|&c| c == '*') {
            return Err(error(
                start + star + 1,
                "a wildcard needs a field, as in `name:web*`; free text already matches substrings",
            ));
        }
        Ok((Query::Text(text.iter().collect()), i))
    }

    fn field_expr(&self, start: usize, op_at: usize) -> Result<(Query, usize), ParseError> {
        let op_char = self.chars[op_at];
        if start == op_at {
            return Err(error(
                op_at + 1,
                format!("missing field name before `{op_char}`"),
            ));
        }
        let name: String = self.chars[start..op_at].iter().collect();
        let Some(field) = Field::from_name(&name) else {
            let known: Vec<&str> = Field::ALL.iter().map(Field::name).collect();
            return Err(error(
                start + 1,
                format!(
                    "unknown field `{name}` (known: {}); to search for it as text, quote it",
                    known.join(", ")
                ),
            ));
        };
        let has_eq = self.at(op_at + 1) == Some('=');
        let (op, value_at) = match op_char {
            ':' => (Op::Eq, op_at + 1),
            '<' if has_eq => (Op::Le, op_at + 2),
            '<' => (Op::Lt, op_at + 1),
            '>' if has_eq => (Op::Ge, op_at + 2),
            '>' => (Op::Gt, op_at + 1),
            _ => {
                return Err(error(
                    op_at + 1,
                    format!("`=` is not an operator; write `{field}:value`"),
                ));
            }
        };
        if op != Op::Eq && !field.is_numeric() {
            return Err(error(
                op_at + 1,
                format!(
                    "`{}` compares numbers, but `{field}` is not numeric (only `code` is)",
                    op.symbol()
                ),
            ));
        }

        let value_col = value_at + 1;
        let (value, star_col, end) = match self.at(value_at) {
            None => return Err(error(value_col, format!("empty value for `{field}`"))),
            Some(c) if c.is_whitespace() || c == ')' => {
                return Err(error(value_col, format!("empty value for `{field}`")));
            }
            Some('(') => {
                return Err(error(
                    value_col,
                    format!(
                        "parentheses cannot group values; write `({field}:a or {field}:b)`, or quote the value"
                    ),
                ));
            }
            Some('"') => {
                let (text, mut end) = self.quoted(value_at)?;
                let star_col = end + 1;
                let prefix = self.at(end) == Some('*');
                if prefix {
                    end += 1;
                }
                self.expect_separator(end)?;
                let value = if prefix {
                    Value::Prefix(text)
                } else {
                    Value::Exact(text)
                };
                (value, star_col, end)
            }
            Some(_) => {
                let end = self.raw_end(value_at)?;
                let raw = &self.chars[value_at..end];
                let (body, prefix) = match raw.split_last() {
                    Some((&'*', body)) => (body, true),
                    _ => (raw, false),
                };
                if let Some(star) = body.iter().position(|&c| c == '*') {
                    return Err(error(
                        value_at + star + 1,
                        "`*` is only allowed at the end of a value; quote the value to match a literal `*`",
                    ));
                }
                let text: String = body.iter().collect();
                let value = if prefix {
                    Value::Prefix(text)
                } else {
                    Value::Exact(text)
                };
                (value, end, end)
            }
        };

        let value = if field.is_numeric() {
            numeric_value(field, op, value, value_col, star_col)?
        } else {
            value
        };
        Ok((Query::Field { field, op, value }, end))
    }
}

fn numeric_value(
    field: Field,
    op: Op,
    value: Value,
    value_col: usize,
    star_col: usize,
) -> Result<Value, ParseError> {
    let sym = op.symbol();
    match value {
        Value::Prefix(p) if p.is_empty() && op == Op::Eq => Ok(Value::Prefix(p)),
        Value::Prefix(p) if p.is_empty() => Err(error(
            value_col,
            format!("`{field}{sym}` needs an integer, found `*`"),
        )),
        Value::Prefix(_) => Err(error(
            star_col,
            format!(
                "`{field}` is numeric and takes no wildcards; use a range such as `{field}>=400 {field}<500`"
            ),
        )),
        Value::Exact(s) => {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                // All digits, so the only possible failure is overflow.
                return s
                    .parse()
                    .map(Value::Number)
                    .map_err(|_| error(value_col, format!("`{s}` is too large for `{field}`")));
            }
            let hint = if op == Op::Eq && s.starts_with(['<', '>']) {
                format!(" (for a comparison write `{field}{s}`)")
            } else {
                String::new()
            };
            Err(error(
                value_col,
                format!("`{field}{sym}` needs an integer, found `{s}`{hint}"),
            ))
        }
        Value::Number(n) => Ok(Value::Number(n)),
    }
}

/// Builds an `And` (or an `Or`) from operands, merging operands of the same kind and collapsing a
/// single operand, so that `a (b c)` and `a b c` are the same query.
fn combine(items: Vec<Query>, and: bool) -> Query {
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Query::And(inner) if and => flat.extend(inner),
            Query::Or(inner) if !and => flat.extend(inner),
            item => flat.push(item),
        }
    }
    match (flat.len(), and) {
        (1, _) => flat.pop().expect("one item"),
        (_, true) => Query::And(flat),
        (_, false) => Query::Or(flat),
    }
}

/// Where a sub-query is printed, which decides whether it needs parentheses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Top,
    OrItem,
    AndItem,
    NotOperand,
}

/// `readable` also brackets an `and` inside an `or`, which precedence makes unnecessary but which
/// readers expect; it is dropped when the extra parentheses would exceed [`MAX_DEPTH`].
fn needs_parens(query: &Query, ctx: Ctx, readable: bool) -> bool {
    match query {
        Query::Or(_) => ctx != Ctx::Top,
        Query::And(_) => {
            matches!(ctx, Ctx::AndItem | Ctx::NotOperand) || (readable && ctx == Ctx::OrItem)
        }
        _ => false,
    }
}

/// The nesting the parser will count when reading back what `write_query` prints.
fn printed_depth(query: &Query, ctx: Ctx, readable: bool) -> usize {
    let own = usize::from(needs_parens(query, ctx, readable));
    let inner = match query {
        Query::And(items) => items
            .iter()
            .map(|q| printed_depth(q, Ctx::AndItem, readable))
            .max()
            .unwrap_or(0),
        Query::Or(items) => items
            .iter()
            .map(|q| printed_depth(q, Ctx::OrItem, readable))
            .max()
            .unwrap_or(0),
        Query::Not(inner) => 1 + printed_depth(inner, Ctx::NotOperand, readable),
        _ => 0,
    };
    own + inner
}

fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        fmt::Write::write_char(f, c)?;
    }
    f.write_str("\"")
}

fn write_query(f: &mut fmt::Formatter<'_>, query: &Query, ctx: Ctx, readable: bool) -> fmt::Result {
    let parens = needs_parens(query, ctx, readable);
    if parens {
        f.write_str("(")?;
    }
    match query {
        Query::All => {}
        Query::And(items) | Query::Or(items) => {
            let (sep, item_ctx) = match query {
                Query::And(_) => (" and ", Ctx::AndItem),
                _ => (" or ", Ctx::OrItem),
            };
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                write_query(f, item, item_ctx, readable)?;
            }
        }
        Query::Not(inner) => {
            f.write_str("not ")?;
            write_query(f, inner, Ctx::NotOperand, readable)?;
        }
        Query::Field { field, op, value } => {
            f.write_str(field.name())?;
            f.write_str(op.symbol())?;
            match value {
                Value::Exact(s) => write_quoted(f, s)?,
                Value::Prefix(s) if s.is_empty() => f.write_str("*")?,
                Value::Prefix(s) => {
                    write_quoted(f, s)?;
                    f.write_str("*")?;
                }
                Value::Number(n) => write!(f, "{n}")?,
            }
        }
        Query::Text(s) => write_quoted(f, s)?,
    }
    if parens {
        f.write_str(")")?;
    }
    Ok(())
}

/// The canonical form: lowercase keywords, explicit `and`, canonical field names, every string
/// quoted. For any query returned by [`parse`], the output parses back to an equal query; `All`
/// prints as the empty string, the only text that parses to it.
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let readable = printed_depth(self, Ctx::Top, true) <= MAX_DEPTH;
        write_query(f, self, Ctx::Top, readable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(field: Field, s: &str) -> Query {
        Query::Field {
            field,
            op: Op::Eq,
            value: Value::Exact(s.to_string()),
        }
    }

    fn prefix(field: Field, s: &str) -> Query {
        Query::Field {
            field,
            op: Op::Eq,
            value: Value::Prefix(s.to_string()),
        }
    }

    fn code(op: Op, n: u64) -> Query {
        Query::Field {
            field: Field::Code,
            op,
            value: Value::Number(n),
        }
    }

    fn text(s: &str) -> Query {
        Query::Text(s.to_string())
    }

    fn not(q: Query) -> Query {
        Query::Not(Box::new(q))
    }

    fn ok(input: &str) -> Query {
        match parse(input) {
            Ok(q) => q,
            Err(e) => panic!("{input:?} failed to parse: {e}"),
        }
    }

    /// Parses expecting an error; returns its column and message.
    fn fail(input: &str) -> (usize, String) {
        match parse(input) {
            Ok(q) => panic!("{input:?} parsed to {q:?}, expected an error"),
            Err(e) => (e.column, e.message),
        }
    }

    fn assert_fails(input: &str, column: usize, needle: &str) {
        let (col, msg) = fail(input);
        assert_eq!(col, column, "column for {input:?} ({msg})");
        assert!(
            msg.contains(needle),
            "message for {input:?} is {msg:?}, expected it to contain {needle:?}"
        );
    }

    fn assert_round_trips(input: &str) {
        let q = ok(input);
        let printed = q.to_string();
        match parse(&printed) {
            Ok(again) => assert_eq!(again, q, "{input:?} printed as {printed:?}"),
            Err(e) => panic!("{input:?} printed as {printed:?}, which fails: {e}"),
        }
        // Canonical means printing is a fixed point.
        assert_eq!(parse(&printed).unwrap().to_string(), printed);
    }

    #[test]
    fn empty_and_whitespace_queries_match_everything() {
        assert_eq!(ok(""), Query::All);
        assert_eq!(ok("   \t\n "), Query::All);
        assert_eq!(ok("\u{00a0}\u{2003}"), Query::All);
        assert_eq!(Query::All.to_string(), "");
    }

    #[test]
    fn bare_words_and_quoted_phrases_are_free_text() {
        assert_eq!(ok("web"), text("web"));
        assert_eq!(ok("deployments/web"), text("deployments/web"));
        assert_eq!(ok("kube-system"), text("kube-system"));
        assert_eq!(ok("\"delete web\""), text("delete web"));
        assert_eq!(ok("  \" spaced \"  "), text(" spaced "));
        assert_eq!(ok("日本語"), text("日本語"));
        // Balanced parentheses stay in the word; an unbalanced `)` closes a group.
        assert_eq!(ok("a(b)"), text("a(b)"));
        assert_eq!(ok("(web)"), text("web"));
    }

    #[test]
    fn keywords_can_be_searched_for_when_quoted() {
        assert_eq!(ok("\"and\""), text("and"));
        assert_eq!(
            ok("\"OR\" \"not\""),
            Query::And(vec![text("OR"), text("not")])
        );
        // A keyword glued to other characters is just a word.
        assert_eq!(ok("android"), text("android"));
        assert_eq!(ok("notes"), text("notes"));
        assert_eq!(ok("order"), text("order"));
    }

    #[test]
    fn field_value_is_exact() {
        assert_eq!(ok("user:alice"), exact(Field::User, "alice"));
        assert_eq!(ok("verb:delete"), exact(Field::Verb, "delete"));
        assert_eq!(ok("ns:kube-system"), exact(Field::Namespace, "kube-system"));
        assert_eq!(ok("user:élodie"), exact(Field::User, "élodie"));
    }

    #[test]
    fn every_canonical_field_name_parses_case_insensitively() {
        for field in Field::ALL {
            let value = if field.is_numeric() { "200" } else { "x" };
            let expected_value = if field.is_numeric() {
                Value::Number(200)
            } else {
                Value::Exact("x".into())
            };
            let expected = Query::Field {
                field,
                op: Op::Eq,
                value: expected_value,
            };
            for name in [
                field.name().to_string(),
                field.name().to_ascii_uppercase(),
                field.name().to_ascii_lowercase(),
            ] {
                assert_eq!(ok(&format!("{name}:{value}")), expected, "{name}");
            }
            assert_eq!(Field::from_name(field.name()), Some(field));
        }
        assert_eq!(Field::ALL.len(), 18);
        assert!(Field::Code.is_numeric());
        assert_eq!(Field::ALL.iter().filter(|f| f.is_numeric()).count(), 1);
    }

    #[test]
    fn field_aliases() {
        let cases = [
            ("ns", Field::Namespace),
            ("NS", Field::Namespace),
            ("ip", Field::SourceIp),
            ("groups", Field::Group),
            ("agent", Field::UserAgent),
            ("ua", Field::UserAgent),
            ("id", Field::AuditId),
            ("sourceip", Field::SourceIp),
            ("APIGROUP", Field::ApiGroup),
            ("impersonated", Field::ImpersonatedUser),
            ("ROLEREF", Field::RoleRef),
        ];
        for (alias, field) in cases {
            assert_eq!(ok(&format!("{alias}:v")), exact(field, "v"), "{alias}");
        }
        assert_eq!(ok("status:404"), code(Op::Eq, 404));
        assert_eq!(ok("STATUS>=500"), code(Op::Ge, 500));
        // Only ASCII case folds: the Kelvin sign is not a `k`, dotless i is not an `i`.
        assert_eq!(Field::from_name("\u{0131}p"), None);
        assert_fails("\u{0131}p:x", 1, "unknown field");
    }

    #[test]
    fn value_may_contain_colons() {
        assert_eq!(
            ok("user:system:serviceaccount:kube-system:*"),
            prefix(Field::User, "system:serviceaccount:kube-system:")
        );
        assert_eq!(
            ok("user:system:serviceaccount:kube-system:default"),
            exact(Field::User, "system:serviceaccount:kube-system:default")
        );
        assert_eq!(ok("ip:::1"), exact(Field::SourceIp, "::1"));
        assert_eq!(
            ok("uri:/api?watch=true"),
            exact(Field::Uri, "/api?watch=true")
        );
        assert_eq!(ok("user:<x>"), exact(Field::User, "<x>"));
    }

    #[test]
    fn value_ends_at_whitespace_or_unbalanced_paren() {
        assert_eq!(
            ok("(user:alice)"),
            exact(Field::User, "alice"),
            "the group's `)` is not part of the value"
        );
        assert_eq!(ok("uri:/x(y)"), exact(Field::Uri, "/x(y)"));
        assert_eq!(
            ok("(uri:/x(y))"),
            exact(Field::Uri, "/x(y)"),
            "balanced parentheses stay, the unbalanced one closes the group"
        );
        assert_eq!(
            ok("user:a verb:b"),
            Query::And(vec![exact(Field::User, "a"), exact(Field::Verb, "b")])
        );
    }

    #[test]
    fn quoted_values_and_escapes() {
        assert_eq!(ok("user:\"john doe\""), exact(Field::User, "john doe"));
        assert_eq!(ok(r#"user:"say \"hi\"""#), exact(Field::User, "say \"hi\""));
        assert_eq!(
            ok(r#"user:"back\\slash""#),
            exact(Field::User, "back\\slash")
        );
        assert_eq!(ok(r#""a \\ \" b""#), text("a \\ \" b"));
        assert_eq!(ok("user:\"a:b (c)\""), exact(Field::User, "a:b (c)"));
        assert_eq!(ok("user:\"and\""), exact(Field::User, "and"));
        // An empty quoted value is how to ask for an empty field (cluster-scoped: no namespace).
        assert_eq!(ok("ns:\"\""), exact(Field::Namespace, ""));
        assert_eq!(
            ok("(user:\"x\")"),
            exact(Field::User, "x"),
            "`)` may follow a closing quote"
        );
        assert_fails(r#"user:"a\nb""#, 8, "unknown escape `\\n`");
        assert_fails("\"a\"b", 4, "after a closing quote");
        assert_fails("user:\"a\"b", 9, "after a closing quote");
        assert_fails("user:\"a\"*b", 10, "after a closing quote");
        assert_fails("ab\"c\"", 3, "inside a word");
        assert_fails("user:ab\"c\"", 8, "inside a word");
        assert_fails("\"\"", 1, "empty quoted phrase");
    }

    #[test]
    fn trailing_star_is_a_prefix_and_bare_star_means_present() {
        assert_eq!(ok("user:adm*"), prefix(Field::User, "adm"));
        assert_eq!(ok("user:*"), prefix(Field::User, ""));
        assert_eq!(ok("ns:*"), prefix(Field::Namespace, ""));
        assert_eq!(ok("code:*"), prefix(Field::Code, ""));
        assert_eq!(ok("user:\"john d\"*"), prefix(Field::User, "john d"));
        assert_eq!(ok("user:\"\"*"), prefix(Field::User, ""));
        assert_eq!(ok("not ns:*"), not(prefix(Field::Namespace, "")));
    }

    #[test]
    fn star_inside_quotes_is_literal() {
        assert_eq!(ok("user:\"a*\""), exact(Field::User, "a*"));
        assert_eq!(ok("user:\"*\""), exact(Field::User, "*"));
        assert_eq!(ok("\"web*\""), text("web*"));
        assert_eq!(ok("user:\"a*b\"*"), prefix(Field::User, "a*b"));
    }

    #[test]
    fn misplaced_stars_are_errors() {
        assert_fails("user:a*b", 7, "only allowed at the end");
        assert_fails("user:**", 6, "only allowed at the end");
        assert_fails("user:*a", 6, "only allowed at the end");
        assert_fails("*", 1, "lone `*`");
        assert_fails("user:a *", 8, "lone `*`");
        assert_fails("web*", 4, "needs a field");
        assert_fails("\"web\"*", 6, "needs a field");
        assert_fails("-*", 2, "lone `*`");
    }

    #[test]
    fn numeric_comparisons() {
        assert_eq!(ok("code:404"), code(Op::Eq, 404));
        assert_eq!(ok("code<500"), code(Op::Lt, 500));
        assert_eq!(ok("code<=499"), code(Op::Le, 499));
        assert_eq!(ok("code>400"), code(Op::Gt, 400));
        assert_eq!(ok("code>=400"), code(Op::Ge, 400));
        assert_eq!(ok("code:\"404\""), code(Op::Eq, 404));
        assert_eq!(ok("code:0404"), code(Op::Eq, 404));
        assert_eq!(ok("code:18446744073709551615"), code(Op::Eq, u64::MAX));
        assert_eq!(
            ok("code>=400 code<500"),
            Query::And(vec![code(Op::Ge, 400), code(Op::Lt, 500)])
        );
    }

    #[test]
    fn numeric_errors() {
        assert_fails("code:4*", 7, "no wildcards");
        assert_fails("code:\"4\"*", 9, "no wildcards");
        assert_fails("code:abc", 6, "needs an integer, found `abc`");
        assert_fails("code:+4", 6, "needs an integer");
        assert_fails("code:-4", 6, "needs an integer");
        assert_fails("code:\"\"", 6, "needs an integer");
        assert_fails("code:٤٠٤", 6, "needs an integer");
        assert_fails("code>=*", 7, "needs an integer, found `*`");
        assert_fails("code>=x", 7, "`code>=` needs an integer");
        assert_fails("code:>=400", 6, "write `code>=400`");
        assert_fails("code:18446744073709551616", 6, "too large");
        assert_fails("code=404", 5, "`=` is not an operator; write `code:value`");
        assert_fails(
            "user=alice",
            5,
            "`=` is not an operator; write `user:value`",
        );
    }

    #[test]
    fn comparisons_on_text_fields_name_the_field() {
        assert_fails("user>=x", 5, "`user` is not numeric");
        assert_fails("verb<get", 5, "`verb` is not numeric");
        assert_fails("ns>a", 3, "`namespace` is not numeric");
        assert_fails("  name<=a", 7, "`name` is not numeric");
    }

    #[test]
    fn implicit_and_explicit_and() {
        let expected = Query::And(vec![
            exact(Field::User, "a"),
            exact(Field::Verb, "b"),
            text("c"),
        ]);
        assert_eq!(ok("user:a verb:b c"), expected);
        assert_eq!(ok("user:a and verb:b AND c"), expected);
        assert_eq!(ok("user:a And verb:b\tc"), expected);
    }

    #[test]
    fn or_and_not() {
        assert_eq!(ok("a or b"), Query::Or(vec![text("a"), text("b")]));
        assert_eq!(
            ok("a OR b Or c"),
            Query::Or(vec![text("a"), text("b"), text("c")])
        );
        assert_eq!(ok("not a"), not(text("a")));
        assert_eq!(ok("NOT a"), not(text("a")));
        assert_eq!(ok("-a"), not(text("a")));
        assert_eq!(ok("-user:admin"), not(exact(Field::User, "admin")));
        assert_eq!(ok("-\"a b\""), not(text("a b")));
        assert_eq!(ok("not not a"), not(not(text("a"))));
        assert_eq!(ok("--a"), not(not(text("a"))));
        assert_eq!(ok("not -a"), not(not(text("a"))));
        assert_eq!(ok("-(a or b)"), not(Query::Or(vec![text("a"), text("b")])));
        assert_eq!(ok("not(a)"), not(text("a")));
        assert_eq!(ok("a and(b)"), Query::And(vec![text("a"), text("b")]));
        assert_eq!(ok("(a)or(b)"), Query::Or(vec![text("a"), text("b")]));
        // A dash inside a word or value is not a negation.
        assert_eq!(ok("user:-x"), exact(Field::User, "-x"));
        assert_eq!(ok("a-b"), text("a-b"));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        assert_eq!(
            ok("a b or c"),
            Query::Or(vec![Query::And(vec![text("a"), text("b")]), text("c")])
        );
        assert_eq!(
            ok("a or b c"),
            Query::Or(vec![text("a"), Query::And(vec![text("b"), text("c")])])
        );
        assert_eq!(
            ok("a or b and c or d"),
            Query::Or(vec![
                text("a"),
                Query::And(vec![text("b"), text("c")]),
                text("d")
            ])
        );
        assert_eq!(ok("not a b"), Query::And(vec![not(text("a")), text("b")]));
        assert_eq!(ok("not a or b"), Query::Or(vec![not(text("a")), text("b")]));
        assert_eq!(
            ok("-a or -b c"),
            Query::Or(vec![
                not(text("a")),
                Query::And(vec![not(text("b")), text("c")])
            ])
        );
    }

    #[test]
    fn parentheses_group() {
        assert_eq!(
            ok("a (b or c)"),
            Query::And(vec![text("a"), Query::Or(vec![text("b"), text("c")])])
        );
        assert_eq!(
            ok("(a or b) and not (c or d)"),
            Query::And(vec![
                Query::Or(vec![text("a"), text("b")]),
                not(Query::Or(vec![text("c"), text("d")])),
            ])
        );
        assert_eq!(ok("((((a))))"), text("a"));
        assert_eq!(ok("( a )"), text("a"));
        assert_eq!(
            ok("(a)(b)"),
            Query::And(vec![text("a"), text("b")]),
            "adjacent groups are an implicit and"
        );
    }

    #[test]
    fn same_kind_operands_are_flattened_and_singletons_collapse() {
        assert_eq!(
            ok("a (b c) ((d and e))"),
            Query::And(vec![text("a"), text("b"), text("c"), text("d"), text("e")])
        );
        assert_eq!(
            ok("(a or b) or (c or (d or e))"),
            Query::Or(vec![text("a"), text("b"), text("c"), text("d"), text("e")])
        );
        // Different kinds are not merged.
        assert_eq!(
            ok("(a or b) (c or d)"),
            Query::And(vec![
                Query::Or(vec![text("a"), text("b")]),
                Query::Or(vec![text("c"), text("d")]),
            ])
        );
        assert_eq!(ok("(a)"), text("a"));
        assert_eq!(ok("-(a)"), not(text("a")));
    }

    #[test]
    fn unknown_field_is_an_error_not_text() {
        let (col, msg) = fail("foo:bar");
        assert_eq!(col, 1);
        assert!(
            msg.starts_with("unknown field `foo` (known: user, group, verb,"),
            "{msg}"
        );
        assert!(msg.contains("apiGroup") && msg.contains("sourceIP") && msg.contains("auditID"));
        assert_fails("user:a  https://example.com", 9, "unknown field `https`");
        assert_fails("a b watch=true", 5, "unknown field `watch`");
        assert_fails("(x (bogus>3))", 5, "unknown field `bogus`");
        assert_fails(":x", 1, "missing field name before `:`");
        assert_fails(">=400", 1, "missing field name before `>`");
        assert_fails("a :x", 3, "missing field name");
    }

    #[test]
    fn empty_value_is_an_error() {
        assert_fails("user:", 6, "empty value for `user`");
        assert_fails("user: alice", 6, "empty value for `user`");
        assert_fails("(ns:)", 5, "empty value for `namespace`");
        assert_fails("code>=", 7, "empty value for `code`");
        assert_fails("user:(a or b)", 6, "parentheses cannot group values");
    }

    #[test]
    fn unterminated_quote_points_at_the_opening_quote() {
        assert_fails("\"abc", 1, "unterminated quote");
        assert_fails("user:a name:\"abc", 13, "unterminated quote");
        assert_fails("\"abc\\", 1, "unterminated quote");
        assert_fails("\"abc\\\"", 1, "unterminated quote");
    }

    #[test]
    fn unbalanced_parentheses() {
        assert_fails("(a", 1, "unclosed `(`");
        assert_fails("a (b (c)", 3, "unclosed `(`");
        assert_fails("a)", 2, "unmatched `)`");
        assert_fails(")", 1, "unmatched `)`");
        assert_fails("(a))", 4, "unmatched `)`");
        assert_fails("a ) b", 3, "unmatched `)`");
        assert_fails("()", 1, "empty parentheses");
        assert_fails("a ( )", 3, "empty parentheses");
    }

    #[test]
    fn dangling_operators() {
        assert_fails(
            "user:a and",
            8,
            "`and` needs a term after it, found the end",
        );
        assert_fails("or b", 1, "`or` needs a term before it");
        assert_fails("and b", 1, "`and` needs a term before it");
        assert_fails("not", 1, "`not` needs a term after it");
        assert_fails("a not", 3, "`not` needs a term after it");
        assert_fails("a or", 3, "`or` needs a term after it");
        assert_fails("a or or b", 3, "`or` needs a term after it, found `or`");
        assert_fails("a and or b", 3, "`and` needs a term after it, found `or`");
        assert_fails("(a and) b", 4, "found `)`");
        assert_fails("(not)", 2, "`not` needs a term after it, found `)`");
        assert_fails("( or a)", 3, "`or` needs a term before it");
        assert_fails("-", 1, "`-` must be directly followed");
        assert_fails("a - b", 3, "`-` must be directly followed");
        assert_fails("(-)", 2, "`-` must be directly followed");
        assert_fails("-and", 1, "`-` needs a term after it, found `and`");
    }

    #[test]
    fn too_long_queries_fail_at_column_one() {
        let max = "a".repeat(MAX_QUERY_LEN);
        assert_eq!(ok(&max), text(&max));
        assert_fails(&"a".repeat(MAX_QUERY_LEN + 1), 1, "longer than 4096");
        // Characters count, not bytes.
        let wide = "é".repeat(MAX_QUERY_LEN);
        assert_eq!(ok(&wide), text(&wide));
        assert_fails(&"é".repeat(MAX_QUERY_LEN + 1), 1, "longer than");
        assert_fails(&" ".repeat(MAX_QUERY_LEN + 1), 1, "longer than");
        assert_fails(&"(".repeat(1_000_000), 1, "longer than");
    }

    #[test]
    fn nesting_is_bounded() {
        let at_limit = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(ok(&at_limit), text("a"));
        let over = format!(
            "{}a{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_fails(&over, MAX_DEPTH + 1, "nesting deeper than 32");

        assert_eq!(
            ok(&format!("{}a", "not ".repeat(MAX_DEPTH)))
                .to_string()
                .len(),
            4 * 32 + 3
        );
        assert_fails(
            &format!("{}a", "not ".repeat(MAX_DEPTH + 1)),
            4 * MAX_DEPTH + 1,
            "nesting",
        );
        assert_fails(
            &format!("{}a", "-".repeat(MAX_DEPTH + 1)),
            MAX_DEPTH + 1,
            "nesting",
        );
        // Parentheses and negations count together.
        let mixed = format!("{}a{}", "-(".repeat(16), ")".repeat(16));
        assert_eq!(
            ok(&mixed).to_string(),
            format!("{}\"a\"", "not ".repeat(16))
        );
        let mixed_over = format!("{}-a{}", "-(".repeat(16), ")".repeat(16));
        assert_fails(&mixed_over, 33, "nesting");

        // The deepest inputs that fit the length limit fail cleanly instead of overflowing the stack.
        assert_fails(&"(".repeat(MAX_QUERY_LEN), MAX_DEPTH + 1, "nesting");
        assert_fails(&"-".repeat(MAX_QUERY_LEN), MAX_DEPTH + 1, "nesting");
        assert_fails(
            &"not ".repeat(MAX_QUERY_LEN / 4),
            4 * MAX_DEPTH + 1,
            "nesting",
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_fails("日本 foo:x", 4, "unknown field `foo`");
        assert_fails("🦀🦀 (", 4, "unclosed");
        assert_fails("é:x", 1, "unknown field `é`");
        assert_fails("user:é*é", 7, "only allowed at the end");
        assert_fails("\u{301}\u{301} )", 4, "unmatched");
        assert_fails("name:\"日本\\q\"", 9, "unknown escape");
    }

    #[test]
    fn error_display_names_the_column() {
        let e = parse("user:").unwrap_err();
        assert_eq!(e.to_string(), "at column 6: empty value for `user`");
    }

    #[test]
    fn display_is_canonical() {
        let cases = [
            ("user:alice", "user:\"alice\""),
            (
                "(USER:alice -verb:get) OR status>=400",
                "(user:\"alice\" and not verb:\"get\") or code>=400",
            ),
            ("a b c", "\"a\" and \"b\" and \"c\""),
            ("a (b or c)", "\"a\" and (\"b\" or \"c\")"),
            ("not (a b)", "not (\"a\" and \"b\")"),
            ("not (a or b)", "not (\"a\" or \"b\")"),
            ("--a", "not not \"a\""),
            ("ns:*", "namespace:*"),
            ("ua:kubectl*", "userAgent:\"kubectl\"*"),
            ("ip:10.0.0.1", "sourceIP:\"10.0.0.1\""),
            (
                "id:abc apigroup:apps",
                "auditID:\"abc\" and apiGroup:\"apps\"",
            ),
            (
                "code:404 code<500 code<=499 code>1",
                "code:404 and code<500 and code<=499 and code>1",
            ),
            (r#"user:"a\"b\\c""#, r#"user:"a\"b\\c""#),
            ("\"and\"", "\"and\""),
            ("", ""),
        ];
        for (input, canonical) in cases {
            assert_eq!(ok(input).to_string(), canonical, "{input:?}");
        }
    }

    #[test]
    fn round_trip_hand_picked_queries() {
        let queries = [
            "",
            "web",
            "deployments/web",
            "\"delete web\"",
            "user:alice",
            "user:\"john doe\"",
            "user:system:serviceaccount:kube-system:*",
            "user:*",
            "user:\"\"",
            "user:\"john d\"*",
            "user:\"a*b\"",
            r#"user:"q\"uote\\""#,
            "group:system:masters",
            "groups:system:authenticated",
            "verb:delete resource:deployments",
            "subresource:exec",
            "apiGroup:apps",
            "namespace:kube-system name:web-1",
            "code:404",
            "code>=400 code<500",
            "code<=499 or code>599",
            "code:*",
            "sourceIP:10.0.0.1",
            "ip:::1",
            "userAgent:\"kubectl/v1.30 (linux/amd64)\"",
            "stage:ResponseComplete level:RequestResponse",
            "decision:forbid",
            "uri:/api/v1/namespaces/default/pods?watch=true",
            "auditID:0b7d5a0e-1234",
            "a b or c",
            "a or b c",
            "a (b or c) d",
            "(a or b) (c or d)",
            "not a",
            "-a -b",
            "not (a or b) or not (c d)",
            "--a",
            "not not not (a b)",
            "(user:alice and not verb:get) or code>=400",
            "((a or (b c)) or d) e",
            "\"and\" \"or\" \"not\"",
            "日本 \"🦀 crab\" name:é*",
            "\"tab\tinside\" \"new\nline\"",
            "uri:/x(y) (uri:/z(w))",
        ];
        for q in queries {
            assert_round_trips(q);
        }
    }

    #[test]
    fn display_drops_readability_parens_that_would_nest_too_deep() {
        // `a (b or c (d or e ...))`: every `or` inside an `and` needs its parentheses, and the
        // readable form would add one more level per `and` inside an `or`.
        let levels = 20;
        let mut input = String::from("z");
        for i in 0..levels {
            input = format!("a{i} (b{i} or c{i} {input})");
        }
        let q = ok(&input);
        assert!(printed_depth(&q, Ctx::Top, true) > MAX_DEPTH);
        let printed = q.to_string();
        assert_eq!(parse(&printed), Ok(q));

        // Shallow queries keep the readable form.
        let shallow = ok("a (b or c d)");
        assert_eq!(
            shallow.to_string(),
            "\"a\" and (\"b\" or (\"c\" and \"d\"))"
        );
    }

    /// Small deterministic generator (SplitMix64), so failures reproduce without a seed file.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Checks what must hold for any input: no panic, an error column inside the input (or one
    /// past it), and a successful parse printing to something that parses back identically.
    fn check_any(input: &str) -> bool {
        match parse(input) {
            Ok(q) => {
                let printed = q.to_string();
                assert_eq!(
                    parse(&printed).as_ref(),
                    Ok(&q),
                    "input {input:?} printed as {printed:?}"
                );
                true
            }
            Err(e) => {
                let len = input.chars().count();
                assert!(
                    (1..=len + 1).contains(&e.column),
                    "column {} out of range for {input:?} ({})",
                    e.column,
                    e.message
                );
                assert!(!e.message.is_empty());
                false
            }
        }
    }

    #[test]
    fn fuzz_random_fragments_never_panic_and_round_trip() {
        const FRAGMENTS: &[&str] = &[
            "user",
            "USER",
            "code",
            "ns",
            "ip",
            "status",
            "foo",
            "apiGroup",
            ":",
            ":",
            "(",
            ")",
            "(",
            ")",
            "\"",
            "\"",
            "\\",
            "*",
            "-",
            "<",
            ">",
            "=",
            " ",
            " ",
            " ",
            "\t",
            "and",
            "or",
            "not",
            "AND",
            "Or",
            "NOT",
            "404",
            "4",
            "x",
            "web",
            "é",
            "日本",
            "🦀",
            "\u{a0}",
            "\u{2028}",
            "\u{0131}",
            "\u{212a}",
            "\u{301}",
            "\n",
            "a:b",
            "18446744073709551616",
            "\u{0}",
            "\u{feff}",
        ];
        let mut rng = Rng(0x5eed_cafe);
        let mut parsed = 0;
        for _ in 0..4000 {
            let n = rng.below(24);
            let input: String = (0..n).map(|_| rng.pick(FRAGMENTS)).collect();
            parsed += usize::from(check_any(&input));
        }
        assert!(parsed > 100, "only {parsed} random inputs parsed");
    }

    #[test]
    fn fuzz_structured_queries_round_trip() {
        const FIELDS: &[&str] = &[
            "user",
            "group",
            "groups",
            "verb",
            "resource",
            "subresource",
            "apiGroup",
            "namespace",
            "ns",
            "name",
            "code",
            "status",
            "sourceIP",
            "ip",
            "userAgent",
            "agent",
            "ua",
            "stage",
            "level",
            "decision",
            "uri",
            "auditID",
            "id",
        ];
        const OPS: &[&str] = &[":", ">=", ">", "<", "<="];
        const VALUES: &[&str] = &[
            "alice",
            "404",
            "*",
            "adm*",
            "system:serviceaccount:kube-system:*",
            "\"john doe\"",
            "\"q\\\"x\"",
            "\"b\\\\s\"",
            "\"p*\"*",
            "\"\"",
            "/x(y)",
            "é",
            "日本*",
        ];
        const NUMBERS: &[&str] = &["404", "500", "0", "\"200\"", "*"];
        // Mistakes, kept rare so that most generated queries parse and exercise the round trip.
        const BAD_VALUES: &[&str] = &["a)", "4*", "-1", "", "a*b", "(x)", "\"open"];
        const WORDS: &[&str] = &[
            "web",
            "deployments/web",
            "\"delete web\"",
            "\"and\"",
            "kube-system",
            "🦀",
            "a(b)",
        ];
        let mut rng = Rng(42);
        let mut parsed = 0;
        for _ in 0..3000 {
            let mut out = String::new();
            let mut open = 0usize;
            for _ in 0..=rng.below(8) {
                match rng.below(12) {
                    0 => {
                        out.push('(');
                        open += 1;
                    }
                    1 if open > 0 => {
                        out.push_str(") ");
                        open -= 1;
                    }
                    2 => out.push_str(rng.pick(&["and ", "or ", "not ", "-", "OR ", "AND "])),
                    3 | 4 => {
                        out.push_str(rng.pick(WORDS));
                        out.push(' ');
                    }
                    _ => {
                        let field = rng.pick(FIELDS);
                        let numeric = Field::from_name(field).is_some_and(|f| f.is_numeric());
                        let (op, value) = match rng.below(20) {
                            0 => (rng.pick(OPS), rng.pick(BAD_VALUES)),
                            _ if numeric => (rng.pick(OPS), rng.pick(NUMBERS)),
                            _ => (":", rng.pick(VALUES)),
                        };
                        out.push_str(field);
                        out.push_str(op);
                        out.push_str(value);
                        out.push(' ');
                    }
                }
            }
            out.push_str(&")".repeat(open));
            parsed += usize::from(check_any(&out));
        }
        assert!(parsed > 1500, "only {parsed} structured inputs parsed");
    }
}
