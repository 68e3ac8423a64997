//! The ABI check (Cilium's alignchecker idea): lb/bpf/xlb_abi.h is the one
//! truth; the Rust mirrors in `lb::abi` must agree with what clang made of
//! it. Reads the BTF of the compiled programs (`lb::objects`) and of a probe
//! object that references every type the header declares, and compares each
//! `struct xlb_*` with `lb::abi::LAYOUTS` (size, field names, offsets),
//! `enum xlb_counter` with `lb::abi::Counter`, and every other constant (each
//! a member of a named `enum xlb_*`) with `lb::abi::CONSTANTS`. Needs clang
//! (as the build does).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use lb::abi::{Counter, Hook, StructLayout, CONSTANTS, LAYOUTS};

const HEADER: &str = include_str!("../bpf/xlb_abi.h");

// ---- a minimal ELF64 + BTF reader ------------------------------------------

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn cstr(b: &[u8], off: usize) -> String {
    let end = b[off..].iter().position(|&c| c == 0).map_or(b.len(), |p| off + p);
    String::from_utf8_lossy(&b[off..end]).into_owned()
}

/// The named section of a little-endian ELF64 object.
fn elf_section<'a>(elf: &'a [u8], want: &str, what: &str) -> &'a [u8] {
    assert!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "{what}: not a little-endian ELF64 object"
    );
    let (shoff, shentsize) = (u64_at(elf, 0x28) as usize, usize::from(u16_at(elf, 0x3a)));
    let (shnum, shstrndx) = (usize::from(u16_at(elf, 0x3c)), usize::from(u16_at(elf, 0x3e)));
    let sh = |i: usize| {
        let h = shoff + i * shentsize;
        (u32_at(elf, h) as usize, u64_at(elf, h + 24) as usize, u64_at(elf, h + 32) as usize)
    };
    let (_, str_off, _) = sh(shstrndx);
    for i in 0..shnum {
        let (name, off, size) = sh(i);
        if cstr(elf, str_off + name) == want {
            return &elf[off..off + size];
        }
    }
    panic!("{what}: no {want} section (compiled without -g?)");
}

/// A struct's size and its members: (name, byte offset, byte size).
type StructInfo = (u32, Vec<(String, u32, u64)>);

#[derive(Debug, Clone)]
struct Member {
    name: String,
    ty: u32,
    /// Bit offset; bitfields are refused by `Btf::parse`.
    bits: u32,
}

#[derive(Debug, Clone)]
enum Ty {
    Int {
        size: u32,
    },
    Ptr(u32),
    Array {
        elem: u32,
        len: u32,
    },
    Struct {
        name: String,
        size: u32,
        members: Vec<Member>,
    },
    Union {
        size: u32,
    },
    Enum {
        name: String,
        size: u32,
        values: Vec<(String, i64)>,
    },
    /// typedef, volatile, const, restrict, type tag: the type they name.
    Alias(u32),
    Var {
        name: String,
        ty: u32,
    },
    Datasec {
        name: String,
        vars: Vec<u32>,
    },
    Other,
}

struct Btf {
    what: String,
    types: Vec<Ty>, // index = type id; 0 is void
}

impl Btf {
    fn parse(btf: &[u8], what: &str) -> Btf {
        assert!(btf.len() >= 24 && u16_at(btf, 0) == 0xeb9f, "{what}: bad BTF magic");
        let hdr_len = u32_at(btf, 4) as usize;
        let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
        let str_off = hdr_len + u32_at(btf, 16) as usize;
        let name = |off: u32| cstr(btf, str_off + off as usize);
        let mut types = vec![Ty::Other];
        let (mut p, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        while p < end {
            let (name_off, info, size_or_type) =
                (u32_at(btf, p), u32_at(btf, p + 4), u32_at(btf, p + 8));
            let (vlen, kind, kflag) = ((info & 0xffff) as usize, (info >> 24) & 0x1f, info >> 31);
            p += 12;
            let ty = match kind {
                1 => {
                    p += 4;
                    Ty::Int { size: size_or_type }
                }
                2 => Ty::Ptr(size_or_type),
                3 => {
                    let t = Ty::Array { elem: u32_at(btf, p), len: u32_at(btf, p + 8) };
                    p += 12;
                    t
                }
                4 | 5 => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let off = u32_at(btf, p + 8);
                        let (bitfield, bits) =
                            if kflag == 1 { (off >> 24, off & 0xff_ffff) } else { (0, off) };
                        let m = Member { name: name(u32_at(btf, p)), ty: u32_at(btf, p + 4), bits };
                        assert!(
                            bitfield == 0,
                            "{what}: struct {}: member {} is a bitfield (the ABI forbids them)",
                            name(name_off),
                            m.name
                        );
                        members.push(m);
                        p += 12;
                    }
                    if kind == 4 {
                        Ty::Struct { name: name(name_off), size: size_or_type, members }
                    } else {
                        Ty::Union { size: size_or_type }
                    }
                }
                6 | 19 => {
                    let width = if kind == 6 { 8 } else { 12 };
                    let values = (0..vlen)
                        .map(|i| {
                            let e = p + width * i;
                            let lo = u32_at(btf, e + 4);
                            let v = if kind == 6 {
                                i64::from(lo as i32)
                            } else {
                                (u64::from(u32_at(btf, e + 8)) << 32 | u64::from(lo)) as i64
                            };
                            (name(u32_at(btf, e)), v)
                        })
                        .collect();
                    p += width * vlen;
                    Ty::Enum { name: name(name_off), size: size_or_type, values }
                }
                8..=11 | 18 => Ty::Alias(size_or_type),
                13 => {
                    p += 8 * vlen;
                    Ty::Other
                }
                14 => {
                    p += 4;
                    Ty::Var { name: name(name_off), ty: size_or_type }
                }
                15 => {
                    let vars = (0..vlen).map(|i| u32_at(btf, p + 12 * i)).collect();
                    p += 12 * vlen;
                    Ty::Datasec { name: name(name_off), vars }
                }
                17 => {
                    p += 4;
                    Ty::Other
                }
                7 | 12 | 16 => Ty::Other,
                k => panic!("{what}: unknown BTF kind {k}"),
            };
            types.push(ty);
        }
        Btf { what: what.to_owned(), types }
    }

    fn of_object(obj: &[u8], what: &str) -> Btf {
        Btf::parse(elf_section(obj, ".BTF", what), what)
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        while let Ty::Alias(next) = self.types[id as usize] {
            id = next;
        }
        id
    }

    fn size(&self, id: u32) -> u64 {
        match &self.types[self.resolve(id) as usize] {
            Ty::Int { size }
            | Ty::Struct { size, .. }
            | Ty::Union { size, .. }
            | Ty::Enum { size, .. } => u64::from(*size),
            Ty::Ptr(_) => 8,
            Ty::Array { elem, len } => u64::from(*len) * self.size(*elem),
            t => panic!("{}: type {id} ({t:?}) has no size", self.what),
        }
    }

    /// Named structs: name -> (size, [(member, byte offset, byte size)]).
    fn structs(&self) -> BTreeMap<String, StructInfo> {
        let mut out = BTreeMap::new();
        for t in &self.types {
            if let Ty::Struct { name, size, members } = t {
                if name.is_empty() {
                    continue;
                }
                let fields = members
                    .iter()
                    .map(|m| {
                        assert!(
                            m.bits % 8 == 0,
                            "{}: {name}.{} not byte aligned",
                            self.what,
                            m.name
                        );
                        (m.name.clone(), m.bits / 8, self.size(m.ty))
                    })
                    .collect();
                out.insert(name.clone(), (*size, fields));
            }
        }
        out
    }

    fn enum_values(&self, want: &str) -> Option<Vec<(String, i64)>> {
        self.types.iter().find_map(|t| match t {
            Ty::Enum { name, values, .. } if name == want => Some(values.clone()),
            _ => None,
        })
    }

    /// (map, "key"/"value", struct name) of every map whose key or value is a
    /// struct: read from the `.maps` section's `__type(key, ...)` pointers.
    fn map_struct_types(&self) -> Vec<(String, &'static str, String)> {
        let mut out = Vec::new();
        for t in &self.types {
            let Ty::Datasec { name, vars } = t else { continue };
            if name != ".maps" {
                continue;
            }
            for &v in vars {
                let Ty::Var { name: map, ty } = &self.types[v as usize] else { continue };
                let Ty::Struct { members, .. } = &self.types[self.resolve(*ty) as usize] else {
                    continue;
                };
                for m in members {
                    let role = match m.name.as_str() {
                        "key" => "key",
                        "value" => "value",
                        _ => continue,
                    };
                    let Ty::Ptr(target) = self.types[self.resolve(m.ty) as usize] else { continue };
                    if let Ty::Struct { name: s, .. } = &self.types[self.resolve(target) as usize] {
                        out.push((map.clone(), role, s.clone()));
                    }
                }
            }
        }
        out
    }
}

// ---- the header and the probe object -----------------------------------------

/// Every `<keyword> xlb_* {` (struct or enum) the header defines, in order.
fn header_defs(keyword: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = HEADER;
    let start = format!("{keyword} xlb_");
    while let Some(i) = rest.find(&start) {
        rest = &rest[i + keyword.len() + 1..];
        let name: String =
            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if rest[name.len()..].trim_start().starts_with('{') && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn header_structs() -> Vec<String> {
    header_defs("struct")
}

fn header_enums() -> Vec<String> {
    header_defs("enum")
}

/// `enum xlb_counter`'s members as written in the header.
fn header_counters() -> Vec<(String, i64)> {
    let start = HEADER.find("enum xlb_counter {").expect("xlb_abi.h: no enum xlb_counter");
    let body = &HEADER[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
    let mut out = Vec::new();
    for line in body.lines() {
        let line = line.split("/*").next().unwrap().trim().trim_end_matches(',');
        if let Some((name, value)) = line.split_once('=') {
            let value = value.trim().parse().unwrap_or_else(|e| panic!("xlb_abi.h: {line:?}: {e}"));
            out.push((name.trim().to_owned(), value));
        }
    }
    out
}

/// The names of the header's `#define`s other than its include guard: there
/// must be none (a bare #define is not in BTF, so no test would see it drift).
fn header_defines() -> Vec<String> {
    HEADER
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#define "))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .filter(|n| n != "XLB_ABI_H")
        .collect()
}

/// Removes its directory on drop (also on panic).
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles a BPF object that declares one global of every header struct
/// and every header enum, so that all of them appear in its BTF.
fn probe_object() -> Vec<u8> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = TempDir(std::env::temp_dir().join(format!("xlb-abi-btf-{}-{n}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut src = String::from("#include \"xlb_abi.h\"\n");
    for (i, s) in header_structs().iter().enumerate() {
        src += &format!("struct {s} xlb_probe_{i};\n");
    }
    for (i, e) in header_enums().iter().enumerate() {
        src += &format!("enum {e} xlb_probe_enum_{i};\n");
    }
    let (c, o) = (dir.0.join("probe.c"), dir.0.join("probe.o"));
    std::fs::write(&c, src).unwrap();
    let bpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
    let clang = std::env::var("XLB_CLANG").unwrap_or_else(|_| "clang".into());
    let out = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf"])
        .arg(format!("-I{}", bpf_build::multiarch_include(&clang).display()))
        .arg(format!("-I{}", bpf_dir.display()))
        .arg("-c")
        .arg(&c)
        .arg("-o")
        .arg(&o)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {clang} to compile the ABI probe: {e} (install clang)")
        });
    assert!(
        out.status.success(),
        "clang failed on the ABI probe:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&o).unwrap()
}

// ---- comparisons ----------------------------------------------------------------

fn strip_raw(f: &str) -> &str {
    f.strip_prefix("r#").unwrap_or(f)
}

fn layout(c_name: &str) -> Option<&'static StructLayout> {
    LAYOUTS.iter().find(|l| l.c_name == c_name)
}

/// Mismatches between one BTF struct and its Rust mirror.
fn compare(what: &str, name: &str, btf: &StructInfo, problems: &mut Vec<String>) {
    let Some(l) = layout(name) else {
        problems.push(format!("{what}: struct {name} has no mirror in lb::abi::LAYOUTS"));
        return;
    };
    let (size, fields) = btf;
    if *size as usize != l.size {
        problems.push(format!("{what}: struct {name}: size {size} in C, {} in Rust", l.size));
    }
    let c: Vec<(&str, usize)> = fields.iter().map(|(n, o, _)| (n.as_str(), *o as usize)).collect();
    let r: Vec<(&str, usize)> = l.fields.iter().map(|(n, o)| (strip_raw(n), *o)).collect();
    if c != r {
        problems.push(format!(
            "{what}: struct {name}: fields differ\n    C:    {c:?}\n    Rust: {r:?}"
        ));
    }
}

fn fail_on(problems: Vec<String>) {
    assert!(problems.is_empty(), "ABI mismatch:\n  {}", problems.join("\n  "));
}

fn objects() -> [(&'static str, &'static [u8]); 3] {
    [
        ("xdp object (xdp/xlb_xdp.c)", lb::objects::xdp()),
        ("tc object (tc/xlb_tc.c)", lb::objects::tc()),
        ("sock object (sock/xlb_sock.c)", lb::objects::sock()),
    ]
}

#[test]
fn compiled_programs_agree_with_the_rust_mirrors() {
    let declared = header_structs();
    let mut problems = Vec::new();
    for (what, obj) in objects() {
        let btf = Btf::of_object(obj, what);
        let structs = btf.structs();
        let maps = btf.map_struct_types();
        assert!(!maps.is_empty(), "{what}: no map with a struct key or value in BTF");
        for (map, role, s) in &maps {
            if layout(s).is_none() {
                problems
                    .push(format!("{what}: map {map}: {role} type struct {s} has no Rust mirror"));
            }
        }
        for (name, s) in structs.iter().filter(|(n, _)| n.starts_with("xlb_")) {
            if !declared.contains(name) {
                problems.push(format!("{what}: struct {name} is not defined in xlb_abi.h"));
            }
            compare(what, name, s, &mut problems);
        }
        let absent: Vec<&String> = declared.iter().filter(|s| !structs.contains_key(*s)).collect();
        eprintln!(
            "{what}: {} ABI structs checked, {} map key/value structs; not in this object's BTF (checked by the probe): {absent:?}",
            declared.len() - absent.len(),
            maps.len()
        );
        if let Some(values) = btf.enum_values("xlb_counter") {
            compare_counters(what, &values, &mut problems);
        }
    }
    fail_on(problems);
}

#[test]
fn every_header_struct_agrees_with_its_rust_mirror() {
    let btf = Btf::of_object(&probe_object(), "ABI probe");
    let structs = btf.structs();
    let mut problems = Vec::new();
    for name in header_structs() {
        match structs.get(&name) {
            Some(s) => compare("xlb_abi.h", &name, s, &mut problems),
            None => problems.push(format!("xlb_abi.h: struct {name} missing from the probe's BTF")),
        }
    }
    for l in LAYOUTS {
        if !structs.contains_key(l.c_name) {
            problems.push(format!("lb::abi::LAYOUTS: {} is not a struct of xlb_abi.h", l.c_name));
        }
    }
    fail_on(problems);
}

#[test]
fn header_structs_have_no_implicit_padding() {
    let btf = Btf::of_object(&probe_object(), "ABI probe");
    let mut problems = Vec::new();
    for (name, (size, fields)) in btf.structs().iter().filter(|(n, _)| n.starts_with("xlb_")) {
        let mut at = 0u64;
        for (f, off, len) in fields {
            if u64::from(*off) != at {
                problems.push(format!(
                    "struct {name}: {} hole byte(s) before {f}",
                    u64::from(*off) - at
                ));
            }
            at = u64::from(*off) + len;
        }
        if at != u64::from(*size) {
            problems
                .push(format!("struct {name}: {} byte(s) of tail padding", u64::from(*size) - at));
        }
    }
    fail_on(problems);
}

fn compare_counters(what: &str, c: &[(String, i64)], problems: &mut Vec<String>) {
    let c: BTreeSet<(String, i64)> = c
        .iter()
        .map(|(n, v)| (n.strip_prefix("XLB_").unwrap_or(n).to_ascii_lowercase(), *v))
        .collect();
    let r: BTreeSet<(String, i64)> =
        Counter::ALL.iter().map(|k| (k.name().to_owned(), *k as u32 as i64)).collect();
    for missing in c.difference(&r) {
        problems.push(format!(
            "{what}: enum xlb_counter {missing:?} missing or different in lb::abi::Counter"
        ));
    }
    for extra in r.difference(&c) {
        problems.push(format!("{what}: lb::abi::Counter {extra:?} not in enum xlb_counter"));
    }
}

#[test]
fn counters_agree_with_the_header_and_btf() {
    let mut problems = Vec::new();
    let header = header_counters();
    assert!(header.len() > 10, "xlb_abi.h: parsed only {} counters", header.len());
    compare_counters("xlb_abi.h", &header, &mut problems);
    let btf = Btf::of_object(&probe_object(), "ABI probe");
    let values = btf.enum_values("xlb_counter").expect("ABI probe: enum xlb_counter not in BTF");
    assert_eq!(values, header, "clang's enum xlb_counter differs from the header as parsed here");
    compare_counters("ABI probe", &values, &mut problems);
    for k in Counter::ALL {
        assert!(
            (*k as u32) < lb::abi::REASON_MAX,
            "{} = {} >= XLB_REASON_MAX",
            k.name(),
            *k as u32
        );
        // The class comes from the number (the programs' exits decide
        // verdicts by range); the name must say the same.
        assert!(
            k.name().starts_with(&format!("{}_", k.class())),
            "{} = {} is in the {} range of xlb_abi.h",
            k.name(),
            *k as u32,
            k.class()
        );
    }
    fail_on(problems);
}

#[test]
fn every_header_constant_agrees_with_its_rust_mirror() {
    let defines = header_defines();
    assert!(
        defines.is_empty(),
        "xlb_abi.h: bare #define(s) {defines:?}: make each a member of a named enum xlb_* so the \
         ABI check sees it"
    );
    let btf = Btf::of_object(&probe_object(), "ABI probe");
    let mut c: BTreeSet<(String, i64)> = BTreeSet::new();
    for e in header_enums().iter().filter(|e| *e != "xlb_counter") {
        let values = btf.enum_values(e).unwrap_or_else(|| panic!("ABI probe: enum {e} not in BTF"));
        assert!(!values.is_empty(), "enum {e} has no members");
        c.extend(values);
    }
    let r: BTreeSet<(String, i64)> = CONSTANTS.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    let mut problems = Vec::new();
    for missing in c.difference(&r) {
        problems.push(format!("xlb_abi.h {missing:?} missing or different in lb::abi::CONSTANTS"));
    }
    for extra in r.difference(&c) {
        problems.push(format!("lb::abi::CONSTANTS {extra:?} not in xlb_abi.h"));
    }
    fail_on(problems);
    // The typed hook enum agrees with the checked constants.
    for h in Hook::ALL {
        let name = format!("XLB_HOOK_{}", h.name().to_ascii_uppercase());
        assert!(
            r.contains(&(name.clone(), i64::from(h.number()))),
            "lb::abi::Hook::{h:?} = {} is not {name} of xlb_abi.h",
            h.number()
        );
    }
}
