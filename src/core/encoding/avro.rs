//! JSON into Avro binary, by a schema as a Schema Registry holds it.
//!
//! The schema text (with the texts of the schemas it references) is parsed once by `apache-avro`; the
//! encoder here walks that parsed schema and the JSON value (a borrowed [`Json`] tree, read straight from
//! the record's text) together and writes the Avro binary encoding in one pass. A value that does not fit
//! stops it with a [`Misfit`]: where (a JSON pointer), what the schema wants there and what was found.
//!
//! How JSON maps onto Avro:
//!
//! - `null`, `boolean`, `string`: the JSON value of that type.
//! - `int`, `long`: a JSON integer in range; a number without a fractional part (`3.0`) fits too.
//! - `float`, `double`: any JSON number (a `float` within its 32-bit range).
//! - `bytes`, `fixed`: a JSON string, taken as its UTF-8 bytes; a `fixed` needs exactly its size.
//! - `enum`: the symbol, as a string. A symbol the enum does not know is a misfit even when the enum has
//!   a `default` symbol: that default is for readers resolving schemas, not for writers.
//! - `array`: a JSON array. `map`: a JSON object.
//! - `record`: a JSON object keyed by field name. An absent field takes its `default` (for a union, in the
//!   union's first branch, as the Avro spec says); absent without a default is a misfit, and so is a key
//!   that is not a field. Field aliases are not looked at.
//! - A key given twice in one object (a record's or a map's) is a misfit, rather than the last one
//!   winning as it would in a `serde_json::Value`.
//! - union: the branch is picked by the JSON value, without the `{"type": value}` wrapping of Avro's JSON
//!   encoding. null → `null`; boolean → `boolean`; an integer → `int` (if it fits) or `long`, then the
//!   int- and long-based logical types, then `float`/`double`, then `decimal`; a fractional number →
//!   `float`/`double`, then `decimal`; a string → `string`, then an `enum` with that symbol, then a logical
//!   type written from strings (uuid, date, time, timestamp, decimal), then `bytes`/`fixed`; an object →
//!   the first `record` or `map` branch that takes it whole; an array → `array`. Between branches of the
//!   same standing the union's order decides. When no branch takes it, an object with a single key that
//!   names a branch (`{"long": 5}`, `{"iot.Reading": {..}}`) is read as Avro's JSON wrapping.
//!
//! Logical types:
//!
//! - `timestamp-*` and `local-timestamp-*` (millis, micros, nanos): an integer in the type's unit, or an
//!   RFC 3339 date-time (`2023-05-26T18:34:04.928538Z`, `..+02:00`, a space instead of the `T`). A
//!   date-time without an offset is taken as UTC; the local kinds take the wall-clock reading as written
//!   and ignore an offset. Digits finer than the unit are cut (towards the past); leap seconds (`:60`)
//!   are refused.
//! - `date`: days since 1970-01-01, or `YYYY-MM-DD`. `time-millis`, `time-micros`: an integer in the unit,
//!   or `HH:MM:SS[.fraction]`.
//! - `uuid`: a string in the 8-4-4-4-12 hex form, written as that string, or as its 16 bytes when the uuid
//!   is a `fixed`.
//! - `decimal` (on `bytes` or `fixed`): a JSON number or a numeric string, converted exactly from its
//!   decimal text. JSON numbers arrive as 64-bit floats, so send strings when more than ~15 significant
//!   digits matter. More fractional digits than `scale` or more digits than `precision` is a misfit, never
//!   a rounding. Written as the unscaled value in big-endian two's complement: minimal for `bytes`,
//!   sign-extended to the size for `fixed`.
//! - `duration` and `big-decimal` are not supported yet: a value there is a misfit.
//!
//! A `logicalType` written on a record field, beside its `type`, is ignored, as the Java implementation
//! (and so the registry and most readers) ignores it: only a type's own `logicalType` counts.
//!
//! Defaults in the schema follow the spec's JSON form, not the rules above: a union's default is for its
//! first branch, and `bytes`/`fixed` defaults are strings whose code points 0-255 are the bytes. They are
//! checked when the schema is parsed, so a schema whose defaults do not fit is refused there.
//!
//! Values nested deeper than 64 arrays, maps and records are refused, so a payload cannot exhaust the
//! stack.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};

use apache_avro::schema::{Alias, DecimalSchema, FixedSchema, Name, RecordSchema, Schema, UnionSchema};
use serde_json::{Map, Value};

use super::json::Json;

use super::Misfit;

/// Arrays, maps and records a value may nest.
const MAX_DEPTH: u32 = 64;

/// The `logicalType` a uuid on `fixed` gets before `apache-avro` reads the schema. 0.21 turns string and
/// fixed uuids alike into `Schema::Uuid`, losing which it was (its own writer then puts a 36-character
/// string where readers expect 16 bytes); under a logical type it does not know, the fixed stays a fixed
/// and keeps this in its attributes.
const UUID_FIXED: &str = "uuid (fixed)";

/// Symbols (and field names) listed in a misfit before the list is cut.
const LISTED: usize = 10;

/// Characters of a string shown in a misfit.
const SHOWN_CHARS: usize = 40;

/// Digits a decimal may have, whatever its precision allows: the conversion to binary is quadratic.
const MAX_DECIMAL_DIGITS: u64 = 1000;

/// The last standing [`standing`] gives a union branch.
const LAST_STANDING: u8 = 4;

/// Keys of an object looked through one by one; a larger object gets an index.
const SCANNED_KEYS: usize = 16;

/// An Avro schema ready to encode JSON values.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    root: Schema,
    /// Every named type by its full name and its aliases, for `Schema::Ref`.
    names: HashMap<Name, Schema>,
}

impl AvroSchema {
    /// `text`: the schema (JSON) as a Schema Registry holds it; `references`: the texts of schemas it
    /// references (their named types), dependencies first. Err: why it cannot be used, in one line.
    pub fn parse(text: &str, references: &[&str]) -> Result<Self, String> {
        let text = prepare(text, false).map_err(|e| format!("the schema {e}"))?;
        let mut referenced = Vec::with_capacity(references.len());
        for (i, reference) in references.iter().enumerate() {
            referenced.push(prepare(reference, true).map_err(|e| format!("reference {} {e}", i + 1))?);
        }
        // `prepare` refuses the input known to reach the parser's few `unwrap`s; this catches any other.
        let parsed = std::panic::catch_unwind(|| Schema::parse_str_with_list(&text, &referenced));
        let (root, referenced) = match parsed {
            Ok(Ok(parsed)) => parsed,
            Ok(Err(e)) => return Err(one_line(&e.to_string())),
            Err(_) => return Err("the schema could not be parsed (the Avro parser failed on it)".into()),
        };
        let mut names = HashMap::new();
        collect_names(&root, &mut names)?;
        for schema in &referenced {
            collect_names(schema, &mut names)?;
        }
        let schema = AvroSchema { root, names };
        schema.check_refs(&schema.root)?;
        for named in schema.names.values() {
            schema.check_refs(named)?;
        }
        schema.check_defaults()?;
        Ok(schema)
    }

    /// Appends the Avro binary encoding of `value` to `out`. On error `out` may hold a partial write
    /// (caller truncates).
    pub fn encode(&self, value: &Json<'_>, out: &mut Vec<u8>) -> Result<(), Misfit> {
        self.enc::<false>(&self.root, value, out, 0)
    }

    /// The top-level type's name for messages ("record iot.Reading", "map", ...).
    pub fn describe(&self) -> String {
        self.short(&self.root)
    }

    /// Every `Schema::Ref` in `schema` (not following them) names a type we know.
    fn check_refs(&self, schema: &Schema) -> Result<(), String> {
        match schema {
            Schema::Ref { name } if !self.names.contains_key(name) => {
                Err(format!("the type {name} is not defined (is a reference missing?)"))
            }
            Schema::Record(r) => r.fields.iter().try_for_each(|f| self.check_refs(&f.schema)),
            Schema::Array(a) => self.check_refs(&a.items),
            Schema::Map(m) => self.check_refs(&m.types),
            Schema::Union(u) => u.variants().iter().try_for_each(|b| self.check_refs(b)),
            Schema::Decimal(d) => self.check_refs(&d.inner),
            _ => Ok(()),
        }
    }

    /// Encodes every field default once, so a default that does not fit shows at parse time.
    fn check_defaults(&self) -> Result<(), String> {
        // In name order, so that of several bad defaults the same one is reported each time.
        let mut records: Vec<(String, &RecordSchema)> = self
            .names
            .iter()
            .filter_map(|(name, schema)| match schema {
                // Aliases of a record are skipped: it is checked under its own name.
                Schema::Record(r) if *name == r.name => Some((name.fullname(None), r)),
                _ => None,
            })
            .collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        let mut scratch = Vec::new();
        for (_, r) in records {
            for f in &r.fields {
                let Some(default) = &f.default else { continue };
                scratch.clear();
                self.enc::<true>(&f.schema, &Json::from(default), &mut scratch, 0).map_err(|m| {
                    let hint =
                        if matches!(f.schema, Schema::Union(_)) { " (a union's is for its first branch)" } else { "" };
                    format!("the default of field {} in record {} does not fit its type{hint}: {m}", f.name, r.name)
                })?;
            }
        }
        Ok(())
    }

    /// Writes `v` as `s`. `DEFAULT` is set while writing a default from the schema, which is in the
    /// spec's JSON form rather than the payload's (a union's first branch; bytes as code points).
    fn enc<const DEFAULT: bool>(&self, s: &Schema, v: &Json<'_>, out: &mut Vec<u8>, depth: u32) -> Result<(), Misfit> {
        match s {
            Schema::Null => match v {
                Json::Null => Ok(()),
                _ => Err(self.wrong(s, v)),
            },
            Schema::Boolean => match v {
                Json::Bool(b) => {
                    out.push(u8::from(*b));
                    Ok(())
                }
                _ => Err(self.wrong(s, v)),
            },
            Schema::Int => {
                write_long(out, self.integer(s, v, i32::MIN.into(), i32::MAX.into())?);
                Ok(())
            }
            Schema::Long => {
                write_long(out, self.integer(s, v, i64::MIN, i64::MAX)?);
                Ok(())
            }
            Schema::Float => match v.as_f64() {
                Some(f) => {
                    let narrow = f as f32;
                    if narrow.is_infinite() {
                        return Err(Misfit::new("float (32-bit, at most 3.4028235e38 either side of 0)", found(v)));
                    }
                    out.extend_from_slice(&narrow.to_le_bytes());
                    Ok(())
                }
                None => Err(self.wrong(s, v)),
            },
            Schema::Double => match v.as_f64() {
                Some(f) => {
                    out.extend_from_slice(&f.to_le_bytes());
                    Ok(())
                }
                None => Err(self.wrong(s, v)),
            },
            Schema::Bytes => match v {
                Json::String(t) if DEFAULT => write_code_points(t, None, out)
                    .ok_or_else(|| Misfit::new("bytes (a string of code points 0 to 255)", found(v))),
                Json::String(t) => {
                    write_bytes(out, t.as_bytes());
                    Ok(())
                }
                _ => Err(self.wrong(s, v)),
            },
            Schema::String => match v {
                Json::String(t) => {
                    write_bytes(out, t.as_bytes());
                    Ok(())
                }
                _ => Err(self.wrong(s, v)),
            },
            Schema::Fixed(f) => self.fixed::<DEFAULT>(f, s, v, out),
            Schema::Enum(e) => match v {
                Json::String(t) => match e.symbols.iter().position(|symbol| symbol == t) {
                    Some(i) => {
                        write_long(out, i as i64);
                        Ok(())
                    }
                    None => Err(self.wrong(s, v)),
                },
                _ => Err(self.wrong(s, v)),
            },
            Schema::Array(a) => {
                let Json::Array(items) = v else { return Err(self.wrong(s, v)) };
                if depth >= MAX_DEPTH {
                    return Err(too_deep());
                }
                // One block of all the items, then the empty block that ends the array.
                if !items.is_empty() {
                    write_long(out, items.len() as i64);
                    for (i, item) in items.iter().enumerate() {
                        self.enc::<DEFAULT>(&a.items, item, out, depth + 1).map_err(|e| e.under(&i.to_string()))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            Schema::Map(m) => {
                let Json::Object(entries) = v else { return Err(self.wrong(s, v)) };
                if depth >= MAX_DEPTH {
                    return Err(too_deep());
                }
                if let Some(key) = repeated_key(entries) {
                    return Err(given_twice(key));
                }
                if !entries.is_empty() {
                    write_long(out, entries.len() as i64);
                    for (key, item) in entries {
                        write_bytes(out, key.as_bytes());
                        self.enc::<DEFAULT>(&m.types, item, out, depth + 1).map_err(|e| e.under(key))?;
                    }
                }
                out.push(0);
                Ok(())
            }
            Schema::Record(r) => self.record::<DEFAULT>(r, s, v, out, depth),
            Schema::Union(u) if DEFAULT => match u.variants().first() {
                Some(first) => {
                    out.push(0); // branch 0
                    self.enc::<true>(first, v, out, depth)
                }
                None => Err(self.wrong(s, v)),
            },
            Schema::Union(u) => self.union(u, v, out, depth),
            Schema::Ref { name } => match self.names.get(name) {
                Some(named) => self.enc::<DEFAULT>(named, v, out, depth),
                None => Err(self.wrong(s, v)),
            },
            Schema::Decimal(d) => self.decimal::<DEFAULT>(d, s, v, out),
            Schema::Uuid => match v {
                Json::String(t) if uuid_bytes(t).is_some() => {
                    write_bytes(out, t.as_bytes());
                    Ok(())
                }
                _ => Err(self.wrong(s, v)),
            },
            Schema::Date => {
                let days = match v {
                    Json::String(t) => parse_date(t.as_bytes())
                        .filter(|d| i32::try_from(*d).is_ok())
                        .ok_or_else(|| self.wrong(s, v))?,
                    _ => self.integer(s, v, i32::MIN.into(), i32::MAX.into())?,
                };
                write_long(out, days);
                Ok(())
            }
            Schema::TimeMillis => {
                let millis = match v {
                    Json::String(t) => parse_time_of_day(t.as_bytes()).ok_or_else(|| self.wrong(s, v))? / 1_000_000,
                    _ => self.integer(s, v, i32::MIN.into(), i32::MAX.into())?,
                };
                write_long(out, millis);
                Ok(())
            }
            Schema::TimeMicros => {
                let micros = match v {
                    Json::String(t) => parse_time_of_day(t.as_bytes()).ok_or_else(|| self.wrong(s, v))? / 1_000,
                    _ => self.integer(s, v, i64::MIN, i64::MAX)?,
                };
                write_long(out, micros);
                Ok(())
            }
            Schema::TimestampMillis => self.timestamp(s, v, 1_000_000, false, out),
            Schema::TimestampMicros => self.timestamp(s, v, 1_000, false, out),
            Schema::TimestampNanos => self.timestamp(s, v, 1, false, out),
            Schema::LocalTimestampMillis => self.timestamp(s, v, 1_000_000, true, out),
            Schema::LocalTimestampMicros => self.timestamp(s, v, 1_000, true, out),
            Schema::LocalTimestampNanos => self.timestamp(s, v, 1, true, out),
            Schema::BigDecimal | Schema::Duration => Err(self.wrong(s, v)),
        }
    }

    fn record<const DEFAULT: bool>(
        &self,
        r: &RecordSchema,
        s: &Schema,
        v: &Json<'_>,
        out: &mut Vec<u8>,
        depth: u32,
    ) -> Result<(), Misfit> {
        let Json::Object(object) = v else { return Err(self.wrong(s, v)) };
        if depth >= MAX_DEPTH {
            return Err(too_deep());
        }
        // Objects mostly list their keys in the schema's order: walk along them, and look a field up only
        // where the two part; in a large object, by an index built at the first such look-up.
        let mut entries = object.iter();
        let mut next = entries.next();
        let mut index = KeyIndex::default();
        let mut seen = 0;
        for f in &r.fields {
            let given = match next {
                Some((key, given)) if *key == f.name => {
                    next = entries.next();
                    Some(given)
                }
                _ => index.get(object, &f.name),
            };
            match (given, &f.default) {
                (Some(given), _) => {
                    seen += 1;
                    self.enc::<DEFAULT>(&f.schema, given, out, depth + 1).map_err(|e| e.under(&f.name))?;
                }
                (None, Some(default)) => {
                    self.enc::<true>(&f.schema, &Json::from(default), out, depth + 1).map_err(|e| e.under(&f.name))?
                }
                (None, None) => return Err(Misfit::new(self.what(&f.schema), "absent").under(&f.name)),
            }
        }
        if seen != object.len() {
            return Err(unknown_field(r, object));
        }
        Ok(())
    }

    /// Picks the branch by the value (see the module doc) and writes its index and the value.
    fn union(&self, u: &UnionSchema, v: &Json<'_>, out: &mut Vec<u8>, depth: u32) -> Result<(), Misfit> {
        let start = out.len();
        let branches = u.variants();
        let mut tried = 0;
        let mut last = None;
        // With several record or map branches, a record whose fields plainly differ from the object's keys
        // is passed over without writing it: most unions of records then cost one attempt.
        let screen = v.is_object() && branches.iter().filter(|b| standing(self.deref(b), v) == Some(0)).count() > 1;
        for rank in 0..=LAST_STANDING {
            for (i, branch) in branches.iter().enumerate() {
                let branch = self.deref(branch);
                if standing(branch, v) != Some(rank) {
                    continue;
                }
                tried += 1;
                if let (true, Schema::Record(r), Json::Object(object)) = (screen, branch, v) {
                    if !plausible(r, object) {
                        continue;
                    }
                }
                write_long(out, i as i64);
                match self.enc::<false>(branch, v, out, depth) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        out.truncate(start);
                        last = Some(e);
                    }
                }
            }
        }
        if let Json::Object(object) = v {
            if let [(key, inner)] = object.as_slice() {
                if let Some(i) = branches.iter().position(|b| self.names_branch(b, key)) {
                    write_long(out, i as i64);
                    let branch = self.deref(&branches[i]);
                    return self.enc::<false>(branch, inner, out, depth + 1).map_err(|e| e.under(key));
                }
            }
        }
        match last {
            // The one branch that could take this kind of value says best why it did not.
            Some(e) if tried == 1 => Err(e),
            _ => Err(Misfit::new(self.union_expected(u), found(v))),
        }
    }

    fn fixed<const DEFAULT: bool>(
        &self,
        f: &FixedSchema,
        s: &Schema,
        v: &Json<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Misfit> {
        let Json::String(t) = v else { return Err(self.wrong(s, v)) };
        if is_uuid_fixed(f) {
            if let Some(bytes) = uuid_bytes(t) {
                out.extend_from_slice(&bytes);
                return Ok(());
            }
            if DEFAULT && write_code_points(t, Some(16), out).is_some() {
                return Ok(());
            }
            return Err(self.wrong(s, v));
        }
        if DEFAULT {
            return write_code_points(t, Some(f.size), out)
                .ok_or_else(|| Misfit::new(format!("fixed {} ({} code points 0 to 255)", f.name, f.size), found(v)));
        }
        if t.len() != f.size {
            return Err(Misfit::new(self.what(s), format!("{} ({} bytes)", found(v), t.len())));
        }
        out.extend_from_slice(t.as_bytes());
        Ok(())
    }

    fn decimal<const DEFAULT: bool>(
        &self,
        d: &DecimalSchema,
        s: &Schema,
        v: &Json<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Misfit> {
        let size = match self.deref(&d.inner) {
            Schema::Bytes => None,
            Schema::Fixed(f) => Some(f.size),
            _ => return Err(self.wrong(s, v)),
        };
        let mut number = NumberText::default();
        let text = match v {
            // A default is the unscaled value's bytes themselves, as code points.
            Json::String(t) if DEFAULT => return write_code_points(t, size, out).ok_or_else(|| self.wrong(s, v)),
            Json::String(t) => t,
            Json::Number(n) => {
                if write!(number, "{n}").is_err() {
                    return Err(self.wrong(s, v));
                }
                number.as_str()
            }
            _ => return Err(self.wrong(s, v)),
        };
        let (p, sc) = (d.precision, d.scale);
        let unscaled = Unscaled::parse(text, p, sc).map_err(|e| {
            let expected = match e {
                DecimalError::NotNumeric => return self.wrong(s, v),
                DecimalError::Fraction => format!("decimal({p}, {sc}) with at most {sc} digits after the point"),
                DecimalError::Digits => {
                    format!("decimal({p}, {sc}) with at most {p} digits, {} before the point", p.saturating_sub(sc))
                }
                DecimalError::TooLong => format!("decimal with at most {MAX_DECIMAL_DIGITS} digits"),
            };
            Misfit::new(expected, found(v))
        })?;
        unscaled.write(size, out).ok_or_else(|| {
            Misfit::new(format!("decimal({p}, {sc}) that fits in {} bytes", size.unwrap_or(0)), found(v))
        })
    }

    /// A timestamp from an integer in its unit or from an RFC 3339 date-time.
    fn timestamp(
        &self,
        s: &Schema,
        v: &Json<'_>,
        unit_nanos: i128,
        local: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Misfit> {
        let count = match v {
            Json::String(t) => {
                let (seconds, nanos, offset) = parse_date_time(t.as_bytes()).ok_or_else(|| self.wrong(s, v))?;
                let seconds = if local { seconds } else { seconds - offset.unwrap_or(0) };
                let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
                i64::try_from(total.div_euclid(unit_nanos)).map_err(|_| {
                    Misfit::new(format!("{} (years 1678 to 2261 in nanoseconds)", self.short(s)), found(v))
                })?
            }
            _ => self.integer(s, v, i64::MIN, i64::MAX)?,
        };
        write_long(out, count);
        Ok(())
    }

    /// An integral JSON number within `min..=max`; a float with no fractional part counts.
    fn integer(&self, s: &Schema, v: &Json<'_>, min: i64, max: i64) -> Result<i64, Misfit> {
        let Json::Number(n) = v else { return Err(self.wrong(s, v)) };
        let integral = match n.as_i64() {
            Some(i) => Some(i),
            None if n.is_u64() => None,
            None => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 || !f.is_finite() {
                    return Err(self.wrong(s, v));
                }
                // -2^63 and 2^63, both exact in f64.
                const BOUND: f64 = 9_223_372_036_854_775_808.0;
                (-BOUND..BOUND).contains(&f).then_some(f as i64)
            }
        };
        match integral {
            Some(i) if (min..=max).contains(&i) => Ok(i),
            _ => Err(Misfit::new(self.range(s, min, max), found(v))),
        }
    }

    fn deref<'a>(&'a self, s: &'a Schema) -> &'a Schema {
        match s {
            Schema::Ref { name } => self.names.get(name).unwrap_or(s),
            _ => s,
        }
    }

    /// Whether `key` names `branch` the way Avro's JSON encoding wraps union values.
    fn names_branch(&self, branch: &Schema, key: &str) -> bool {
        let is = |name: &Name| key == name.name || key == name.fullname(None);
        match branch {
            Schema::Ref { name } => is(name),
            Schema::Record(r) => is(&r.name),
            Schema::Enum(e) => is(&e.name),
            Schema::Fixed(f) => is(&f.name),
            Schema::Decimal(d) => self.names_branch(&d.inner, key),
            other => type_name(other) == Some(key),
        }
    }

    #[cold]
    #[inline(never)]
    fn wrong(&self, s: &Schema, v: &Json<'_>) -> Misfit {
        Misfit::new(self.what(s), found(v))
    }

    /// What `s` wants, in words, for [`Misfit::expected`].
    fn what(&self, s: &Schema) -> String {
        match s {
            Schema::Int => "int (32-bit)".into(),
            Schema::Long => "long (64-bit)".into(),
            Schema::Bytes => "bytes (a string)".into(),
            Schema::Map(_) => "map (an object)".into(),
            Schema::Union(u) => self.union_expected(u),
            Schema::Enum(e) => format!("one of the symbols {}", listed(&e.symbols)),
            Schema::Fixed(f) if is_uuid_fixed(f) => "uuid (8-4-4-4-12 hex digits)".into(),
            Schema::Fixed(f) => format!("fixed {} ({} bytes)", f.name, f.size),
            Schema::Decimal(d) => format!("decimal({}, {}) (a number or a numeric string)", d.precision, d.scale),
            Schema::Uuid => "uuid (8-4-4-4-12 hex digits)".into(),
            Schema::Date => "date (days since 1970-01-01, or YYYY-MM-DD)".into(),
            Schema::TimeMillis => "time-millis (milliseconds after midnight, or HH:MM:SS[.fraction])".into(),
            Schema::TimeMicros => "time-micros (microseconds after midnight, or HH:MM:SS[.fraction])".into(),
            Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => format!("{} (an integer or an RFC 3339 date-time)", self.short(s)),
            Schema::BigDecimal | Schema::Duration => format!("{} (not supported)", self.short(s)),
            Schema::Ref { name } => match self.names.get(name) {
                Some(named) => self.what(named),
                None => format!("type {name} (not defined)"),
            },
            _ => self.short(s),
        }
    }

    /// What `s` wants for a range misfit.
    fn range(&self, s: &Schema, min: i64, max: i64) -> String {
        match s {
            Schema::Int => format!("int (32-bit, {min} to {max})"),
            Schema::Long => format!("long (64-bit, {min} to {max})"),
            _ => format!("{} ({min} to {max})", self.short(s)),
        }
    }

    /// The short name of `s`, as in a union's list of branches.
    fn short(&self, s: &Schema) -> String {
        match s {
            Schema::Union(u) => format!("union [{}]", self.branch_list(u)),
            Schema::Record(r) => format!("record {}", r.name),
            Schema::Enum(e) => format!("enum {}", e.name),
            Schema::Fixed(f) if is_uuid_fixed(f) => "uuid".into(),
            Schema::Fixed(f) => format!("fixed {}", f.name),
            Schema::Decimal(d) => format!("decimal({}, {})", d.precision, d.scale),
            Schema::Ref { name } => match self.names.get(name) {
                Some(named) => self.short(named),
                None => format!("type {name}"),
            },
            Schema::Null => "null".into(),
            Schema::Boolean => "boolean".into(),
            Schema::Int => "int".into(),
            Schema::Long => "long".into(),
            Schema::Float => "float".into(),
            Schema::Double => "double".into(),
            Schema::Bytes => "bytes".into(),
            Schema::String => "string".into(),
            Schema::Array(_) => "array".into(),
            Schema::Map(_) => "map".into(),
            Schema::BigDecimal => "big-decimal".into(),
            Schema::Uuid => "uuid".into(),
            Schema::Date => "date".into(),
            Schema::TimeMillis => "time-millis".into(),
            Schema::TimeMicros => "time-micros".into(),
            Schema::TimestampMillis => "timestamp-millis".into(),
            Schema::TimestampMicros => "timestamp-micros".into(),
            Schema::TimestampNanos => "timestamp-nanos".into(),
            Schema::LocalTimestampMillis => "local-timestamp-millis".into(),
            Schema::LocalTimestampMicros => "local-timestamp-micros".into(),
            Schema::LocalTimestampNanos => "local-timestamp-nanos".into(),
            Schema::Duration => "duration".into(),
        }
    }

    fn branch_list(&self, u: &UnionSchema) -> String {
        u.variants().iter().map(|b| self.short(b)).collect::<Vec<_>>().join(", ")
    }

    fn union_expected(&self, u: &UnionSchema) -> String {
        format!("one of [{}]", self.branch_list(u))
    }
}

/// How well a union branch suits a JSON value: 0 best, up to [`LAST_STANDING`]; `None` when it cannot take
/// that kind of value at all. A branch ranked here may still refuse the value itself.
fn standing(s: &Schema, v: &Json<'_>) -> Option<u8> {
    let time_number = || {
        matches!(
            s,
            Schema::Date
                | Schema::TimeMillis
                | Schema::TimeMicros
                | Schema::TimestampMillis
                | Schema::TimestampMicros
                | Schema::TimestampNanos
                | Schema::LocalTimestampMillis
                | Schema::LocalTimestampMicros
                | Schema::LocalTimestampNanos
        )
    };
    match v {
        Json::Null => matches!(s, Schema::Null).then_some(0),
        Json::Bool(_) => matches!(s, Schema::Boolean).then_some(0),
        Json::Number(n) if n.is_f64() => match s {
            Schema::Float | Schema::Double => Some(0),
            Schema::Int | Schema::Long => Some(1),
            _ if time_number() => Some(2),
            Schema::Decimal(_) => Some(3),
            _ => None,
        },
        Json::Number(n) => match s {
            // An int or long that cannot hold it still goes last, so that when it is the only number
            // branch the misfit names its range.
            Schema::Int => Some(if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) { 0 } else { 4 }),
            Schema::Long => Some(if n.as_i64().is_some() { 0 } else { 4 }),
            _ if time_number() => Some(1),
            Schema::Float | Schema::Double => Some(2),
            Schema::Decimal(_) => Some(3),
            _ => None,
        },
        Json::String(_) => match s {
            Schema::String => Some(0),
            Schema::Enum(_) => Some(1),
            Schema::Uuid | Schema::Decimal(_) => Some(2),
            Schema::Fixed(f) if is_uuid_fixed(f) => Some(2),
            _ if time_number() => Some(2),
            Schema::Bytes | Schema::Fixed(_) => Some(3),
            _ => None,
        },
        Json::Object(_) => matches!(s, Schema::Record(_) | Schema::Map(_)).then_some(0),
        Json::Array(_) => matches!(s, Schema::Array(_)).then_some(0),
    }
}

/// Whether `object` could be a `r` at all: no keys `r` lacks, no field without a default missing.
fn plausible(r: &RecordSchema, object: &[(Cow<'_, str>, Json<'_>)]) -> bool {
    object.iter().all(|(key, _)| r.lookup.contains_key(key.as_ref()))
        && r.fields.iter().all(|f| f.default.is_some() || object.iter().any(|(key, _)| *key == f.name))
}

/// The Avro type name a union value is wrapped in, for unnamed types.
fn type_name(s: &Schema) -> Option<&'static str> {
    Some(match s {
        Schema::Null => "null",
        Schema::Boolean => "boolean",
        Schema::Int | Schema::Date | Schema::TimeMillis => "int",
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "long",
        Schema::Float => "float",
        Schema::Double => "double",
        Schema::Bytes | Schema::BigDecimal => "bytes",
        Schema::String | Schema::Uuid => "string",
        Schema::Array(_) => "array",
        Schema::Map(_) => "map",
        _ => return None,
    })
}

fn is_uuid_fixed(f: &FixedSchema) -> bool {
    f.size == 16 && f.attributes.get("logicalType").and_then(Value::as_str) == Some(UUID_FIXED)
}

#[cold]
#[inline(never)]
fn unknown_field(r: &RecordSchema, object: &[(Cow<'_, str>, Json<'_>)]) -> Misfit {
    let Some((key, _)) = object.iter().find(|(key, _)| !r.fields.iter().any(|f| f.name == *key)) else {
        // Every key is a field, so one of them is there twice.
        return given_twice(repeated_key(object).unwrap_or(""));
    };
    let known: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
    Misfit::new(format!("a field of record {} (known: {})", r.name, listed(&known)), "unknown field").under(key)
}

/// A key that `entries` give more than once (the first such, by its second place).
fn repeated_key<'k>(entries: &'k [(Cow<'_, str>, Json<'_>)]) -> Option<&'k str> {
    if entries.len() <= SCANNED_KEYS {
        return entries
            .iter()
            .enumerate()
            .find_map(|(i, (key, _))| entries[..i].iter().any(|(earlier, _)| earlier == key).then_some(key.as_ref()));
    }
    let mut keys = std::collections::HashSet::with_capacity(entries.len());
    entries.iter().map(|(key, _)| key.as_ref()).find(|key| !keys.insert(*key))
}

#[cold]
#[inline(never)]
fn given_twice(key: &str) -> Misfit {
    Misfit::new("each key once", "a key given twice").under(key)
}

/// Where the fields of an object are, for records whose object does not follow the schema's order.
#[derive(Default)]
struct KeyIndex<'o> {
    /// Keys and their places, sorted by key then place; built for objects of more than [`SCANNED_KEYS`].
    sorted: Vec<(&'o str, usize)>,
}

impl<'o> KeyIndex<'o> {
    /// The value of the first entry named `key`.
    fn get<'a>(&mut self, object: &'o [(Cow<'a, str>, Json<'a>)], key: &str) -> Option<&'o Json<'a>> {
        if object.len() <= SCANNED_KEYS {
            return object.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        }
        if self.sorted.is_empty() {
            self.sorted = object.iter().enumerate().map(|(i, (k, _))| (k.as_ref(), i)).collect();
            self.sorted.sort_unstable();
        }
        let at = self.sorted.partition_point(|(k, _)| *k < key);
        match self.sorted.get(at) {
            Some((k, i)) if *k == key => Some(&object[*i].1),
            _ => None,
        }
    }
}

#[cold]
#[inline(never)]
fn too_deep() -> Misfit {
    Misfit::new(
        format!("at most {MAX_DEPTH} levels of arrays, maps and records"),
        format!("nested deeper than {MAX_DEPTH} levels"),
    )
}

/// What a value is, for [`Misfit::found`].
#[cold]
#[inline(never)]
fn found(v: &Json<'_>) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("boolean {b}"),
        Json::Number(n) => format!("number {n}"),
        Json::String(t) => {
            let mut quoted = match t.char_indices().nth(SHOWN_CHARS) {
                Some((cut, _)) => format!("{:?}", &t[..cut]),
                None => return format!("string {t:?}"),
            };
            quoted.insert(quoted.len() - 1, '…');
            format!("string {quoted}")
        }
        Json::Array(items) => format!("array of {}", items.len()),
        Json::Object(_) => "object".into(),
    }
}

/// `items` joined with commas, cut after [`LISTED`].
fn listed<T: AsRef<str>>(items: &[T]) -> String {
    let mut list = items.iter().take(LISTED).map(AsRef::as_ref).collect::<Vec<_>>().join(", ");
    if items.len() > LISTED {
        let _ = write!(list, ", … ({} more)", items.len() - LISTED);
    }
    list
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Zigzag varint, as Avro writes `int` and `long`.
#[inline]
fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// A string whose code points 0-255 are bytes (the spec's JSON form of `bytes` and `fixed`), with its
/// length first, or exactly `size` of them for a fixed. None if a code point is above 255 or the size is
/// wrong.
fn write_code_points(t: &str, size: Option<usize>, out: &mut Vec<u8>) -> Option<()> {
    if t.chars().any(|c| u32::from(c) > 0xff) {
        return None;
    }
    let count = t.chars().count();
    match size {
        Some(size) if size != count => return None,
        Some(_) => {}
        None => write_long(out, count as i64),
    }
    out.extend(t.chars().map(|c| c as u8));
    Some(())
}

/// The 16 bytes of a uuid in 8-4-4-4-12 hex form.
fn uuid_bytes(t: &str) -> Option<[u8; 16]> {
    let text = t.as_bytes();
    if text.len() != 36 {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut nibble = 0;
    for (i, c) in text.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if *c != b'-' {
                return None;
            }
            continue;
        }
        let digit = char::from(*c).to_digit(16)? as u8;
        bytes[nibble / 2] |= if nibble % 2 == 0 { digit << 4 } else { digit };
        nibble += 1;
    }
    Some(bytes)
}

/// A number's text without allocating: `f64` and `u64` print in well under 40 characters.
struct NumberText {
    buf: [u8; 40],
    len: usize,
}

impl Default for NumberText {
    fn default() -> Self {
        NumberText { buf: [0; 40], len: 0 }
    }
}

impl fmt::Write for NumberText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl NumberText {
    fn as_str(&self) -> &str {
        self.buf.get(..self.len).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("")
    }
}

enum DecimalError {
    NotNumeric,
    /// More fractional digits than the scale.
    Fraction,
    /// More digits than the precision.
    Digits,
    TooLong,
}

/// A decimal's unscaled value: in an `i128` up to 38 digits, else as a sign and a little-endian magnitude.
enum Unscaled {
    Small(i128),
    Big { negative: bool, magnitude: Vec<u8> },
}

impl Unscaled {
    /// `text` (`-12.50`, `1.5e2`) times 10^`scale`, exactly.
    fn parse(text: &str, precision: usize, scale: usize) -> Result<Unscaled, DecimalError> {
        let (negative, int, frac, exponent) = split_decimal(text).ok_or(DecimalError::NotNumeric)?;
        let digits = || int.iter().chain(frac).copied();
        let count = int.len() + frac.len();
        // The value is digits × 10^shift once scaled.
        let shift = exponent
            .saturating_sub(i64::try_from(frac.len()).unwrap_or(i64::MAX))
            .saturating_add(i64::try_from(scale).unwrap_or(i64::MAX));
        let dropped = if shift < 0 { usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX) } else { 0 };
        let kept = count.saturating_sub(dropped);
        if digits().skip(kept).any(|c| c != b'0') {
            return Err(DecimalError::Fraction);
        }
        let leading = digits().take(kept).take_while(|c| *c == b'0').count();
        let significant = (kept - leading) as u64;
        if significant == 0 {
            return Ok(Unscaled::Small(0));
        }
        let zeros = shift.max(0) as u64;
        let total = significant.saturating_add(zeros);
        if total > precision as u64 {
            return Err(DecimalError::Digits);
        }
        if total > MAX_DECIMAL_DIGITS {
            return Err(DecimalError::TooLong);
        }
        let all = digits().take(kept).skip(leading).chain(std::iter::repeat_n(b'0', zeros as usize)).map(|c| c - b'0');
        if total <= 38 {
            // 10^38 - 1 < 2^127: no overflow.
            let magnitude = all.fold(0i128, |acc, d| acc * 10 + i128::from(d));
            return Ok(Unscaled::Small(if negative { -magnitude } else { magnitude }));
        }
        let mut magnitude: Vec<u8> = Vec::new();
        for d in all {
            let mut carry = u32::from(d);
            for byte in magnitude.iter_mut() {
                let x = u32::from(*byte) * 10 + carry;
                *byte = x as u8;
                carry = x >> 8;
            }
            if carry > 0 {
                magnitude.push(carry as u8);
            }
        }
        Ok(Unscaled::Big { negative, magnitude })
    }

    /// Big-endian two's complement: minimal with its length first (`size` None), or sign-extended to
    /// `size` bytes. None when it does not fit in `size`.
    fn write(&self, size: Option<usize>, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Unscaled::Small(x) => {
                let bytes = x.to_be_bytes();
                write_twos(&bytes[minimal_start(&bytes)..], *x < 0, size, out)
            }
            Unscaled::Big { negative, magnitude } => {
                // A spare leading byte for the sign, then negate in place if needed.
                let mut bytes: Vec<u8> = std::iter::once(0).chain(magnitude.iter().rev().copied()).collect();
                if *negative {
                    bytes.iter_mut().for_each(|b| *b = !*b);
                    for b in bytes.iter_mut().rev() {
                        let (sum, carry) = b.overflowing_add(1);
                        *b = sum;
                        if !carry {
                            break;
                        }
                    }
                }
                write_twos(&bytes[minimal_start(&bytes)..], *negative, size, out)
            }
        }
    }
}

/// Where the shortest two's complement form of `bytes` starts: leading bytes that only repeat the sign go.
fn minimal_start(bytes: &[u8]) -> usize {
    let mut start = 0;
    while start + 1 < bytes.len()
        && ((bytes[start] == 0 && bytes[start + 1] < 0x80) || (bytes[start] == 0xff && bytes[start + 1] >= 0x80))
    {
        start += 1;
    }
    start
}

fn write_twos(bytes: &[u8], negative: bool, size: Option<usize>, out: &mut Vec<u8>) -> Option<()> {
    match size {
        None => write_bytes(out, bytes),
        Some(size) => {
            let pad = size.checked_sub(bytes.len())?;
            out.extend(std::iter::repeat_n(if negative { 0xff } else { 0 }, pad));
            out.extend_from_slice(bytes);
        }
    }
    Some(())
}

/// `[+-]digits[.digits][(e|E)[+-]digits]` into its sign, integer digits, fraction digits and exponent.
fn split_decimal(text: &str) -> Option<(bool, &[u8], &[u8], i64)> {
    let b = text.as_bytes();
    let (negative, mut i) = match b.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let run =
        |from: usize| from + b.get(from..).map_or(0, |rest| rest.iter().take_while(|c| c.is_ascii_digit()).count());
    let int_end = run(i);
    let int = b.get(i..int_end)?;
    i = int_end;
    let mut frac: &[u8] = &[];
    if b.get(i) == Some(&b'.') {
        let end = run(i + 1);
        frac = b.get(i + 1..end)?;
        i = end;
    }
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut exponent = 0i64;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative_exponent = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let end = run(i);
        let digits = b.get(i..end)?;
        if digits.is_empty() {
            return None;
        }
        // Far past any precision; the cap only keeps the arithmetic from overflowing.
        exponent = digits.iter().fold(0i64, |acc, c| (acc * 10 + i64::from(c - b'0')).min(1 << 40));
        if negative_exponent {
            exponent = -exponent;
        }
        i = end;
    }
    (i == b.len()).then_some((negative, int, frac, exponent))
}

/// Digits only, as a number; up to 4 of them here.
fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |acc, c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
}

/// `YYYY-MM-DD` as days since 1970-01-01.
fn parse_date(b: &[u8]) -> Option<i64> {
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2] = b else { return None };
    let year = number(&[*y1, *y2, *y3, *y4])?;
    let month = number(&[*m1, *m2])?;
    let day = number(&[*d1, *d2])?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `HH:MM:SS[.fraction]` at the start of `b`: seconds of the day, nanoseconds (finer digits cut), and the
/// rest of `b`.
fn parse_clock(b: &[u8]) -> Option<(i64, u32, &[u8])> {
    let [h1, h2, b':', m1, m2, b':', s1, s2, rest @ ..] = b else { return None };
    let (hour, minute, second) = (number(&[*h1, *h2])?, number(&[*m1, *m2])?, number(&[*s1, *s2])?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = rest;
    let mut nanos = 0u32;
    if let [b'.', fraction @ ..] = rest {
        let count = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 {
            return None;
        }
        for (i, c) in fraction.iter().take(count).enumerate() {
            if i < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
        }
        if count < 9 {
            nanos *= 10u32.pow(9 - count as u32);
        }
        rest = fraction.get(count..).unwrap_or(&[]);
    }
    Some((hour * 3600 + minute * 60 + second, nanos, rest))
}

/// `HH:MM:SS[.fraction]` as nanoseconds after midnight.
fn parse_time_of_day(b: &[u8]) -> Option<i64> {
    match parse_clock(b)? {
        (seconds, nanos, []) => Some(seconds * 1_000_000_000 + i64::from(nanos)),
        _ => None,
    }
}

/// An RFC 3339 date-time (a space also separating date and time, the offset optional): the wall-clock
/// seconds since 1970-01-01T00:00:00, the nanoseconds, and the offset in seconds if one was given.
fn parse_date_time(b: &[u8]) -> Option<(i64, u32, Option<i64>)> {
    let days = parse_date(b.get(..10)?)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (seconds, nanos, rest) = parse_clock(b.get(11..)?)?;
    let offset = match rest {
        [] => None,
        [b'Z' | b'z'] => Some(0),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (number(&[*h1, *h2])?, number(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            Some(if *sign == b'-' { -offset } else { offset })
        }
        _ => return None,
    };
    Some((days * 86_400 + seconds, nanos, offset))
}

/// Reads the schema's JSON and readies it for `apache-avro`: refuses names that would make its parser
/// panic, marks uuids on `fixed` (see [`UUID_FIXED`]) and drops `logicalType` from record fields.
///
/// `reference`: the text is one of the schemas referenced, whose name the parser reads whatever its type.
fn prepare(text: &str, reference: bool) -> Result<String, String> {
    let mut json: Value = serde_json::from_str(text).map_err(|e| format!("is not JSON: {e}"))?;
    prepare_type(&mut json, reference)?;
    Ok(json.to_string())
}

/// [`prepare`] for the JSON of one type (a name, a union's array, or an object). `top`: a referenced
/// schema's own JSON.
fn prepare_type(t: &mut Value, top: bool) -> Result<(), String> {
    match t {
        Value::Array(branches) => branches.iter_mut().try_for_each(|b| prepare_type(b, false)),
        Value::Object(object) => {
            let named = matches!(object.get("type").and_then(Value::as_str), Some("record" | "enum" | "fixed"));
            if named || top {
                if let Some(Value::String(name)) = object.get("name") {
                    check_name(name)?;
                }
            }
            if named {
                check_aliases(object)?;
            }
            let fixed_16 = object.get("type").and_then(Value::as_str) == Some("fixed")
                && object.get("size").and_then(Value::as_u64) == Some(16);
            if fixed_16 && object.get("logicalType").and_then(Value::as_str) == Some("uuid") {
                object.insert("logicalType".into(), Value::String(UUID_FIXED.into()));
            }
            for key in ["type", "items", "values"] {
                if let Some(inner) = object.get_mut(key) {
                    prepare_type(inner, false)?;
                }
            }
            if let Some(Value::Array(fields)) = object.get_mut("fields") {
                for field in fields.iter_mut() {
                    let Value::Object(field) = field else { continue };
                    field.remove("logicalType");
                    // A field whose type is a bare "enum" or "fixed" is parsed as that type, its aliases
                    // as the type's.
                    if matches!(field.get("type").and_then(Value::as_str), Some("enum" | "fixed")) {
                        check_aliases(field)?;
                    }
                    if let Some(inner) = field.get_mut("type") {
                        prepare_type(inner, false)?;
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_aliases(object: &Map<String, Value>) -> Result<(), String> {
    let Some(Value::Array(aliases)) = object.get("aliases") else { return Ok(()) };
    aliases.iter().filter_map(Value::as_str).try_for_each(check_name)
}

/// An Avro full name: dot-separated parts of letters, digits and `_`, none starting with a digit.
fn check_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    let ident = |part: &str| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    // A leading dot (an empty namespace) is allowed.
    let valid = parts.iter().enumerate().all(|(i, part)| ident(part) || (i == 0 && part.is_empty() && parts.len() > 1));
    if valid {
        Ok(())
    } else {
        Err(format!("has an invalid name {name:?}: names are letters, digits and _, not starting with a digit"))
    }
}

/// Every named type in `schema` into `names`, under its full name and its aliases.
fn collect_names(schema: &Schema, names: &mut HashMap<Name, Schema>) -> Result<(), String> {
    match schema {
        Schema::Record(r) => {
            add_name(names, &r.name, r.aliases.as_deref(), schema)?;
            r.fields.iter().try_for_each(|f| collect_names(&f.schema, names))
        }
        Schema::Enum(e) => add_name(names, &e.name, e.aliases.as_deref(), schema),
        Schema::Fixed(f) => add_name(names, &f.name, f.aliases.as_deref(), schema),
        // A named fixed under a decimal stands for the decimal wherever its name is used.
        Schema::Decimal(d) => match d.inner.as_ref() {
            Schema::Fixed(f) => add_name(names, &f.name, f.aliases.as_deref(), schema),
            _ => Ok(()),
        },
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().try_for_each(|b| collect_names(b, names)),
        _ => Ok(()),
    }
}

fn add_name(
    names: &mut HashMap<Name, Schema>,
    name: &Name,
    aliases: Option<&[Alias]>,
    schema: &Schema,
) -> Result<(), String> {
    if let Some(known) = names.get(name) {
        return if known == schema { Ok(()) } else { Err(format!("the type {name} is defined twice, differently")) };
    }
    names.insert(name.clone(), schema.clone());
    for alias in aliases.unwrap_or_default() {
        names.entry(alias.fully_qualified_name(&name.namespace)).or_insert_with(|| schema.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
