//! VNN-LIB properties (the VNN-COMP fragment of SMT-LIB): `(declare-const X_i Real)` and
//! `(declare-const Y_j Real)` for the network's inputs and outputs, input bounds
//! `(assert (<= X_i c))` / `(assert (>= X_i c))`, and output constraints that are linear
//! inequalities over the Y's, possibly inside `(or (and ...) ...)`.
//!
//! A VNN-LIB file describes the *violation* of a property: the answer is `sat` when some input in
//! the box gives outputs satisfying every output assertion (a counterexample), `unsat` when none
//! does (the property holds). The assertions are multiplied out into a disjunction of
//! conjunctions; each conjunction is an input box and constraints c^T y + d <= 0 (or < 0) on the
//! outputs, and conjunctions with the same box are grouped into one [`Region`]
//! ([`Region::disjuncts`]). A disjunction over the inputs (ACAS Xu property 6) gives several
//! regions, which are separate sub-problems that must all hold.
//!
//! Linear expressions may use numbers, variables, `+`, `-` (unary or n-ary) and `*` with at most
//! one non-constant factor. Errors carry the line of the offending expression.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// One linear constraint on the outputs: `coeffs^T y + constant <= 0` (`< 0` when `strict`).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputConstraint {
    /// One coefficient per output.
    pub coeffs: Vec<f64>,
    /// The constant term.
    pub constant: f64,
    /// A strict inequality.
    pub strict: bool,
}

impl OutputConstraint {
    /// c^T y + d at outputs `y` (in floating point).
    pub fn value(&self, y: &[f64]) -> f64 {
        crate::linalg::dot(&self.coeffs, y) + self.constant
    }

    /// Whether outputs `y` satisfy the constraint (exactly, in floating point).
    pub fn holds(&self, y: &[f64]) -> bool {
        let v = self.value(y);
        if self.strict { v < 0.0 } else { v <= 0.0 }
    }
}

impl OutputConstraint {
    /// Whether the constraint certainly holds for the real outputs, given float outputs `y` within
    /// `err` of them ([`crate::Network::forward_with_error`]): the value plus its rounding bound
    /// is < 0 (strict) or <= 0.
    pub fn surely_holds(&self, y: &[f64], err: &[f64]) -> bool {
        let (mut v, mut abs, mut moved) = (self.constant, self.constant.abs(), 0.0);
        for ((c, y), e) in self.coeffs.iter().zip(y).zip(err) {
            v += c * y;
            abs += (c * y).abs();
            moved += c.abs() * e;
        }
        let hi = crate::bounds::rounding::upper(v, moved + crate::bounds::rounding::gamma(y.len() + 2) * abs);
        if self.strict { hi < 0.0 } else { hi <= 0.0 }
    }
}

/// One input box with the output constraints that violate the property on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    /// Input lower bounds (one per X_i).
    pub input_lo: Vec<f64>,
    /// Input upper bounds.
    pub input_hi: Vec<f64>,
    /// The violation region on this box: some disjunct whose constraints all hold.
    pub disjuncts: Vec<Vec<OutputConstraint>>,
}

impl Region {
    /// Whether outputs `y` satisfy one of this region's disjuncts.
    pub fn violated_by(&self, y: &[f64]) -> bool {
        self.disjuncts.iter().any(|d| d.iter().all(|c| c.holds(y)))
    }

    /// Whether `x` lies in the box (exactly, in floating point).
    pub fn contains(&self, x: &[f64]) -> bool {
        x.len() == self.input_lo.len()
            && x.iter().zip(&self.input_lo).zip(&self.input_hi).all(|((v, lo), hi)| *v >= *lo && *v <= *hi)
    }
}

/// A parsed VNN-LIB property: a counterexample is an input of some region's box whose outputs
/// satisfy one of that region's disjuncts. Most properties have one region (one input box);
/// a disjunction over the inputs (ACAS Xu property 6) gives one region per input box.
#[derive(Clone, Debug, PartialEq)]
pub struct Property {
    /// Number of outputs (Y_j declared).
    pub outputs: usize,
    /// The input boxes and their violation regions; the property holds when it holds on each.
    pub regions: Vec<Region>,
}

impl Property {
    /// Number of inputs (X_i declared).
    pub fn inputs(&self) -> usize {
        self.regions.first().map_or(0, |r| r.input_lo.len())
    }

    /// Whether input `x` with outputs `y` is a counterexample: `x` lies in a region's box and `y`
    /// satisfies one of that region's disjuncts.
    pub fn violated_by(&self, x: &[f64], y: &[f64]) -> bool {
        self.regions.iter().any(|r| r.contains(x) && r.violated_by(y))
    }
}

fn err(line: usize, detail: impl Into<String>) -> Error {
    Error::ModelFormat { path: None, detail: format!("VNN-LIB line {line}: {}", detail.into()) }
}

/// An S-expression with the line where it starts.
#[derive(Clone, Debug)]
enum Sexp {
    Atom(String, usize),
    List(Vec<Sexp>, usize),
}

impl Sexp {
    fn line(&self) -> usize {
        match self {
            Sexp::Atom(_, l) | Sexp::List(_, l) => *l,
        }
    }
}

fn parse_sexps(text: &str) -> Result<Vec<Sexp>> {
    let mut stack: Vec<(Vec<Sexp>, usize)> = vec![(Vec::new(), 0)];
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '\n' => {
                line += 1;
                chars.next();
            }
            ';' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '(' => {
                stack.push((Vec::new(), line));
                chars.next();
            }
            ')' => {
                chars.next();
                if stack.len() == 1 {
                    return Err(err(line, "unbalanced ')'"));
                }
                let (items, start) = stack.pop().expect("more than the root");
                stack.last_mut().expect("the root").0.push(Sexp::List(items, start));
            }
            c if c.is_whitespace() => {
                chars.next();
            }
            _ => {
                let mut tok = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '(' || c == ')' || c == ';' {
                        break;
                    }
                    tok.push(c);
                    chars.next();
                }
                stack.last_mut().expect("root").0.push(Sexp::Atom(tok, line));
            }
        }
    }
    if stack.len() != 1 {
        let open = stack.last().map_or(line, |s| s.1);
        return Err(err(open, "unclosed '('"));
    }
    Ok(stack.pop().expect("root").0)
}

/// A linear expression: coefficients per variable (inputs 'X', outputs 'Y') and a constant.
#[derive(Clone, Debug, Default)]
struct Linear {
    terms: HashMap<(char, usize), f64>,
    constant: f64,
}

impl Linear {
    fn scale(mut self, s: f64) -> Self {
        self.terms.values_mut().for_each(|v| *v *= s);
        self.constant *= s;
        self
    }
    fn add(mut self, other: Linear) -> Self {
        for (k, v) in other.terms {
            *self.terms.entry(k).or_insert(0.0) += v;
        }
        self.constant += other.constant;
        self
    }
}

struct Parser {
    inputs: usize,
    outputs: usize,
    declared: HashMap<String, (char, usize)>,
}

impl Parser {
    fn expr(&self, e: &Sexp) -> Result<Linear> {
        match e {
            Sexp::Atom(tok, line) => {
                if let Some(&var) = self.declared.get(tok) {
                    let mut l = Linear::default();
                    l.terms.insert(var, 1.0);
                    return Ok(l);
                }
                let v: f64 =
                    tok.parse().map_err(|_| err(*line, format!("'{tok}' is not a declared variable or a number")))?;
                if !v.is_finite() {
                    return Err(err(*line, format!("'{tok}' is not finite")));
                }
                Ok(Linear { constant: v, ..Default::default() })
            }
            Sexp::List(items, line) => {
                let (Some(Sexp::Atom(op, _)), args) = (items.first(), items.get(1..).unwrap_or(&[])) else {
                    return Err(err(*line, "an expression must start with an operator"));
                };
                let vals: Vec<Linear> = args.iter().map(|a| self.expr(a)).collect::<Result<_>>()?;
                match (op.as_str(), vals.len()) {
                    ("+", n) if n >= 1 => Ok(vals.into_iter().reduce(Linear::add).expect("n >= 1")),
                    ("-", 1) => Ok(vals.into_iter().next().expect("one").scale(-1.0)),
                    ("-", n) if n >= 2 => {
                        let mut it = vals.into_iter();
                        let first = it.next().expect("n >= 2");
                        Ok(it.fold(first, |acc, v| acc.add(v.scale(-1.0))))
                    }
                    ("*", n) if n >= 1 => {
                        let mut acc = Linear { constant: 1.0, ..Default::default() };
                        for v in vals {
                            if acc.terms.is_empty() {
                                let c = acc.constant;
                                acc = v.scale(c);
                            } else if v.terms.is_empty() {
                                acc = acc.scale(v.constant);
                            } else {
                                return Err(err(*line, "a product of two variables is not linear"));
                            }
                        }
                        Ok(acc)
                    }
                    (op, n) => Err(err(*line, format!("unsupported operator '{op}' with {n} arguments"))),
                }
            }
        }
    }

    /// A boolean formula as a disjunction of conjunctions of `lhs - rhs <= 0` (or `< 0`).
    fn formula(&self, e: &Sexp) -> Result<Vec<Vec<(Linear, bool, usize)>>> {
        let Sexp::List(items, line) = e else {
            return Err(err(e.line(), "a constraint must be a list"));
        };
        let Some(Sexp::Atom(op, _)) = items.first() else {
            return Err(err(*line, "a constraint must start with an operator"));
        };
        let args = &items[1..];
        match op.as_str() {
            "and" => {
                let mut out = vec![Vec::new()];
                for a in args {
                    let f = self.formula(a)?;
                    let mut next = Vec::new();
                    for left in &out {
                        for right in &f {
                            let mut c = left.clone();
                            c.extend(right.iter().cloned());
                            next.push(c);
                        }
                    }
                    if next.len() > 100_000 {
                        return Err(err(*line, "the formula expands to too many disjuncts"));
                    }
                    out = next;
                }
                Ok(out)
            }
            "or" => {
                let mut out = Vec::new();
                for a in args {
                    out.extend(self.formula(a)?);
                }
                Ok(out)
            }
            "<=" | ">=" | "<" | ">" => {
                if args.len() != 2 {
                    return Err(err(*line, format!("'{op}' takes two arguments, got {}", args.len())));
                }
                let (a, b) = (self.expr(&args[0])?, self.expr(&args[1])?);
                let diff = if op.starts_with('<') { a.add(b.scale(-1.0)) } else { b.add(a.scale(-1.0)) };
                Ok(vec![vec![(diff, op.len() == 1, *line)]])
            }
            other => Err(err(*line, format!("unsupported connective '{other}'"))),
        }
    }
}

/// Parses a VNN-LIB property from text.
pub fn vnnlib_from_str(text: &str) -> Result<Property> {
    let sexps = parse_sexps(text)?;
    let mut p = Parser { inputs: 0, outputs: 0, declared: HashMap::new() };
    let mut asserts = Vec::new();
    for s in &sexps {
        let Sexp::List(items, line) = s else {
            return Err(err(s.line(), "a top-level form must be a list"));
        };
        match items.first() {
            Some(Sexp::Atom(head, _)) if head == "declare-const" => {
                let (Some(Sexp::Atom(name, _)), Some(Sexp::Atom(sort, _)), 3) =
                    (items.get(1), items.get(2), items.len())
                else {
                    return Err(err(*line, "expected (declare-const NAME Real)"));
                };
                if sort != "Real" {
                    return Err(err(*line, format!("sort '{sort}' is not supported (Real only)")));
                }
                let (kind, index) = name
                    .split_once('_')
                    .and_then(|(k, i)| Some((k, i.parse::<usize>().ok()?)))
                    .filter(|(k, _)| *k == "X" || *k == "Y")
                    .ok_or_else(|| err(*line, format!("variable '{name}' must be named X_i or Y_j")))?;
                let kind = kind.chars().next().expect("X or Y");
                if p.declared.insert(name.clone(), (kind, index)).is_some() {
                    return Err(err(*line, format!("'{name}' is declared twice")));
                }
                if kind == 'X' {
                    p.inputs = p.inputs.max(index + 1);
                } else {
                    p.outputs = p.outputs.max(index + 1);
                }
            }
            Some(Sexp::Atom(head, _)) if head == "assert" => {
                if items.len() != 2 {
                    return Err(err(*line, "assert takes one formula"));
                }
                asserts.push(&items[1]);
            }
            _ => return Err(err(*line, "expected declare-const or assert")),
        }
    }
    for (kind, count) in [('X', p.inputs), ('Y', p.outputs)] {
        for i in 0..count {
            if !p.declared.values().any(|v| *v == (kind, i)) {
                return Err(err(1, format!("{kind}_{i} is not declared (indices must be contiguous)")));
            }
        }
    }
    if p.inputs == 0 || p.outputs == 0 {
        return Err(err(1, "the property declares no X or no Y variables"));
    }
    // The conjunction of every assertion, multiplied out into a disjunction of conjunctions of
    // atoms; each conjunction then splits into its input box and its output constraints.
    type Atom = (Linear, bool, usize);
    let mut dnf: Vec<Vec<Atom>> = vec![Vec::new()];
    for a in asserts {
        let f = p.formula(a)?;
        if let Some((_, _, line)) = f
            .iter()
            .flatten()
            .find(|(l, _, _)| l.terms.keys().any(|k| k.0 == 'X') && l.terms.keys().any(|k| k.0 == 'Y'))
        {
            return Err(err(*line, "a constraint mixes inputs and outputs"));
        }
        if f.len() == 1 {
            // A plain conjunction (every bound of a robustness property): no copies.
            let f = f.into_iter().next().expect("one disjunct");
            for c in &mut dnf {
                c.extend(f.iter().cloned());
            }
            continue;
        }
        let mut next = Vec::with_capacity(dnf.len() * f.len());
        for left in &dnf {
            for right in &f {
                let mut c = left.clone();
                c.extend(right.iter().cloned());
                next.push(c);
            }
        }
        if next.len() > 100_000 {
            return Err(err(a.line(), "the constraints expand to too many disjuncts"));
        }
        dnf = next;
    }
    let mut regions: Vec<Region> = Vec::new();
    for conj in dnf {
        let mut lo = vec![f64::NEG_INFINITY; p.inputs];
        let mut hi = vec![f64::INFINITY; p.inputs];
        let mut outputs = Vec::new();
        for (l, strict, line) in conj {
            if l.terms.keys().any(|k| k.0 == 'X') {
                if l.terms.len() != 1 {
                    return Err(err(line, "input constraints must bound one variable each"));
                }
                let (&(_, i), &c) = l.terms.iter().next().expect("one term");
                // c x + d <= 0.
                let bound = -l.constant / c;
                if c > 0.0 {
                    hi[i] = hi[i].min(bound);
                } else if c < 0.0 {
                    lo[i] = lo[i].max(bound);
                }
            } else {
                let mut coeffs = vec![0.0; p.outputs];
                for (&(_, j), &v) in &l.terms {
                    coeffs[j] += v;
                }
                outputs.push(OutputConstraint { coeffs, constant: l.constant, strict });
            }
        }
        for i in 0..p.inputs {
            if !(lo[i].is_finite() && hi[i].is_finite()) {
                return Err(err(1, format!("X_{i} needs a finite lower and upper bound")));
            }
            if lo[i] > hi[i] {
                return Err(err(1, format!("X_{i} has an empty range [{}, {}]", lo[i], hi[i])));
            }
        }
        match regions.iter_mut().find(|r| r.input_lo == lo && r.input_hi == hi) {
            Some(r) => r.disjuncts.push(outputs),
            None => regions.push(Region { input_lo: lo, input_hi: hi, disjuncts: vec![outputs] }),
        }
    }
    Ok(Property { outputs: p.outputs, regions })
}

/// Reads a VNN-LIB property file.
pub fn load_vnnlib(path: impl AsRef<Path>) -> Result<Property> {
    let path = path.as_ref();
    vnnlib_from_str(&super::read_text(path)?).map_err(|e| super::with_path(e, path))
}
