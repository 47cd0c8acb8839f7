//! Just enough of Python's pickle format to read the CIFAR "python version" batches
//! (`cifar-10-batches-py`, `cifar-100-python`): a dict with `data` (a numpy uint8 array
//! [N, 3072]) and `labels` / `fine_labels` (a list of ints). No Rust crate reads numpy arrays
//! out of a pickle, so this is a small pickle machine for protocols 0–5 that builds a value
//! tree without executing anything; the array's bytes are found in its reconstruction
//! arguments (Python 2's `str`, Python 3's `bytes`, or `_codecs.encode(str, 'latin1')`).
//! Memoised values are copies, which is enough for these files (nothing memoised is
//! mutated after it is fetched again).

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
    Str(String),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// callable(args), as recorded (never called).
    Reduce(Box<Value>, Box<Value>),
    /// obj.__setstate__(state), as recorded.
    Build(Box<Value>, Box<Value>),
    Mark,
}

impl Value {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    /// The entry `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(kv) => kv
                .iter()
                .find(|(k, _)| k.as_text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    /// Integers of a list or tuple.
    pub fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Value::List(v) | Value::Tuple(v) => v
                .iter()
                .map(|x| match x {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
    /// Every byte payload inside this value (an array's raw data is the largest).
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.collect_payloads(&mut out);
        out
    }
    fn collect_payloads(&self, out: &mut Vec<Vec<u8>>) {
        match self {
            Value::Bytes(b) => out.push(b.clone()),
            Value::Reduce(f, args) => {
                // Python 3 writes bytes at protocol 2 as _codecs.encode(text, 'latin1').
                if let (Value::Global(m, n), Value::Tuple(a)) = (&**f, &**args) {
                    if m == "_codecs" && n == "encode" {
                        if let Some(Value::Str(s)) = a.first() {
                            out.push(s.chars().map(|c| c as u32 as u8).collect());
                            return;
                        }
                    }
                }
                f.collect_payloads(out);
                args.collect_payloads(out);
            }
            Value::Build(o, s) => {
                o.collect_payloads(out);
                s.collect_payloads(out);
            }
            Value::List(v) | Value::Tuple(v) => v.iter().for_each(|x| x.collect_payloads(out)),
            Value::Dict(kv) => kv.iter().for_each(|(_, x)| x.collect_payloads(out)),
            _ => {}
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("truncated at byte {} (needs {n} more)", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |a, &x| (a << 8) | x as u64))
    }
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("truncated text opcode")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|e| e.to_string())?;
        self.pos += n + 1;
        Ok(s)
    }
}

/// Parse a pickle into its value tree.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { b: bytes, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    let pop = |s: &mut Vec<Value>| s.pop().ok_or_else(|| "stack underflow".to_string());
    let pop_mark = |s: &mut Vec<Value>| -> Result<Vec<Value>, String> {
        let m = s
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("MARK missing")?;
        let items = s.split_off(m + 1);
        s.pop();
        Ok(items)
    };
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.take(8)?; // FRAME
            }
            b'.' => return pop(&mut stack),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.le(2)? as i64)),
            b'J' => stack.push(Value::Int(r.le(4)? as u32 as i32 as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate().take(8) {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'I' | b'L' => {
                let l = r.line()?.trim_end_matches('L');
                stack.push(match l {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(l.parse().map_err(|_| format!("bad int `{l}`"))?),
                });
            }
            b'G' => stack.push(Value::Float(f64::from_bits(u64::from_be_bytes(
                r.take(8)?.try_into().map_err(|_| "float")?,
            )))),
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'T' | b'B' => {
                let n = r.le(4)? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x8e | 0x96 => {
                let n = r.le(8)? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'X' => {
                let n = r.le(4)? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            0x8d => {
                let n = r.le(8)? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'S' | b'V' => {
                let l = r.line()?;
                stack.push(Value::Str(l.trim_matches(|c| c == '\'' || c == '"').into()));
            }
            b'q' => {
                let k = r.u8()? as u64;
                memo.insert(k, stack.last().cloned().ok_or("empty stack")?);
            }
            b'r' => {
                let k = r.le(4)?;
                memo.insert(k, stack.last().cloned().ok_or("empty stack")?);
            }
            0x94 => {
                let k = memo.len() as u64;
                memo.insert(k, stack.last().cloned().ok_or("empty stack")?);
            }
            b'p' => {
                let k: u64 = r.line()?.parse().map_err(|_| "bad PUT")?;
                memo.insert(k, stack.last().cloned().ok_or("empty stack")?);
            }
            b'h' | b'j' | b'g' => {
                let k = match op {
                    b'h' => r.u8()? as u64,
                    b'j' => r.le(4)?,
                    _ => r.line()?.parse().map_err(|_| "bad GET")?,
                };
                stack.push(memo.get(&k).cloned().ok_or(format!("memo {k} missing"))?);
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let kv = items
                    .chunks(2)
                    .filter(|c| c.len() == 2)
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect();
                stack.push(Value::Dict(kv));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(format!("APPEND to a non-list at byte {at}")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(format!("APPENDS to a non-list at byte {at}")),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        for c in items.chunks(2).filter(|c| c.len() == 2) {
                            d.push((c[0].clone(), c[1].clone()));
                        }
                    }
                    _ => return Err(format!("SETITEM on a non-dict at byte {at}")),
                }
            }
            b'c' => {
                let m = r.line()?.to_string();
                let n = r.line()?.to_string();
                stack.push(Value::Global(m, n));
            }
            0x93 => {
                let n = pop(&mut stack)?;
                let m = pop(&mut stack)?;
                stack.push(Value::Global(
                    m.as_text().unwrap_or_default().into(),
                    n.as_text().unwrap_or_default().into(),
                ));
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                stack.push(Value::Reduce(Box::new(f), Box::new(args)));
            }
            b'b' => {
                let state = pop(&mut stack)?;
                let obj = pop(&mut stack)?;
                stack.push(Value::Build(Box::new(obj), Box::new(state)));
            }
            b'0' => {
                pop(&mut stack)?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let v = stack.last().cloned().ok_or("empty stack")?;
                stack.push(v);
            }
            other => {
                return Err(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {at}"
                ))
            }
        }
    }
}
