//! Reading and changing a TOML tree by key path.

use toml::{Table, Value};

pub(crate) fn lookup<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

pub(crate) fn insert(root: &mut Table, path: &[&str], value: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = root;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("table just ensured");
    }
    t.insert(last.to_string(), value);
}

pub(crate) fn remove(v: &mut Value, path: &[&str]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for p in parents {
        match cur.get_mut(p) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.as_table_mut().and_then(|t| t.remove(*last)).is_some()
}
