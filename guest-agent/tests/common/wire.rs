//! Kata's JSON request shapes (proto field names, as the agent's policy input shows them)
//! to protobuf messages: the inverse of `guest_agent::policy_gate::request_to_json`, so a
//! test can write a request the way a policy sees it and send it over ttrpc.
#![allow(clippy::unwrap_used, clippy::panic)]

use protocols::protobuf::reflect::{MessageDescriptor, ReflectValueBox, RuntimeFieldType, RuntimeType};
use protocols::protobuf::{MessageDyn, MessageFull};
use serde_json::Value;

fn message(desc: &MessageDescriptor, v: &Value) -> Box<dyn MessageDyn> {
    let mut m = desc.new_instance();
    for (key, val) in v.as_object().unwrap_or_else(|| panic!("{}: expected an object", desc.name())) {
        if val.is_null() {
            continue;
        }
        let f = desc.field_by_name(key).unwrap_or_else(|| panic!("{} has no field {key}", desc.name()));
        match f.runtime_field_type() {
            RuntimeFieldType::Singular(t) => f.set_singular_field(&mut *m, value(&t, val)),
            RuntimeFieldType::Repeated(t) => {
                let mut r = f.mut_repeated(&mut *m);
                for x in val.as_array().unwrap() {
                    r.push(value(&t, x));
                }
            }
            RuntimeFieldType::Map(k, t) => {
                let mut map = f.mut_map(&mut *m);
                for (mk, mv) in val.as_object().unwrap() {
                    map.insert(value(&k, &Value::String(mk.clone())), value(&t, mv));
                }
            }
        }
    }
    m
}

fn value(t: &RuntimeType, v: &Value) -> ReflectValueBox {
    let int = || v.as_i64().unwrap_or_else(|| panic!("{v} is not an integer"));
    match t {
        RuntimeType::I32 => ReflectValueBox::I32(int() as i32),
        RuntimeType::I64 => ReflectValueBox::I64(int()),
        RuntimeType::U32 => ReflectValueBox::U32(v.as_u64().unwrap() as u32),
        RuntimeType::U64 => ReflectValueBox::U64(v.as_u64().unwrap()),
        RuntimeType::F32 => ReflectValueBox::F32(v.as_f64().unwrap() as f32),
        RuntimeType::F64 => ReflectValueBox::F64(v.as_f64().unwrap()),
        RuntimeType::Bool => ReflectValueBox::Bool(v.as_bool().unwrap()),
        RuntimeType::String => ReflectValueBox::String(v.as_str().unwrap().to_owned()),
        RuntimeType::VecU8 => ReflectValueBox::Bytes(v.as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect()),
        RuntimeType::Enum(d) => ReflectValueBox::Enum(d.clone(), int() as i32),
        RuntimeType::Message(d) => ReflectValueBox::Message(message(d, v)),
    }
}

/// `v` as the message `M`; asserts that the agent's policy input for the message carries
/// every value of `v` (nothing was lost in the conversion).
pub fn to_proto<M: MessageFull>(v: &Value) -> M {
    let m = message(&M::descriptor(), v);
    let m = *m.downcast_box::<M>().unwrap_or_else(|_| panic!("not a {}", M::descriptor().name()));
    // The agent's policy input for this message carries every value of the JSON we meant.
    let seen = guest_agent::policy_gate::request_to_json(&m);
    assert_subset(v, &seen, "");
    m
}

fn assert_subset(want: &Value, got: &Value, at: &str) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                match g.get(k) {
                    Some(gv) => assert_subset(v, gv, &format!("{at}.{k}")),
                    None => assert!(v.is_null(), "{at}.{k} lost in the conversion"),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            assert_eq!(w.len(), g.len(), "{at}");
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                assert_subset(a, b, &format!("{at}[{i}]"));
            }
        }
        (Value::Null, _) => {}
        _ => assert_eq!(want, got, "{at}"),
    }
}
