//! Validation of `map`: its sources (`items`, `range`, `lines`, `over`, `from`) and the rule
//! that `from` steps share one lane.

use super::raw::RawMap;
use super::*;
use std::collections::BTreeMap;

pub(super) fn compile_map(
    m: &RawMap,
    needs: &[u16],
    index: &BTreeMap<&str, usize>,
) -> Result<MapSource, String> {
    let given = [
        m.items.is_some(),
        m.range.is_some(),
        m.lines.is_some(),
        m.over.is_some(),
        m.from.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => return Err("give one of `items`, `range`, `lines`, `over` or `from`".into()),
        1 => {}
        _ => return Err("give only one of `items`, `range`, `lines`, `over` or `from`".into()),
    }
    if let Some(from) = &m.from {
        let ids = from.to_vec();
        if ids.is_empty() {
            return Err("`from` names no step: give a step id or a list of them".into());
        }
        let mut out = Vec::new();
        for id in &ids {
            let Some(&j) = index.get(id.as_str()) else {
                return Err(format!("`from` names unknown step \"{id}\""));
            };
            if !needs.contains(&(j as u16)) {
                return Err(format!(
                    "`from` reads step \"{id}\", which must also be listed in `needs`"
                ));
            }
            if out.contains(&(j as u16)) {
                return Err(format!("`from` lists \"{id}\" twice"));
            }
            out.push(j as u16);
        }
        return Ok(MapSource::From(out));
    }
    if let Some(items) = &m.items {
        if items.is_empty() {
            return Err("`items` is empty: a map needs at least one item".into());
        }
        if items.len() > MAP_ITEMS_MAX as usize {
            return Err(format!("{} items; at most {MAP_ITEMS_MAX}", items.len()));
        }
        return Ok(MapSource::Items(
            items.iter().map(Json::from_value).collect(),
        ));
    }
    if let Some(r) = &m.range {
        let [start, end] = r.as_slice() else {
            return Err("`range` is [start, end) with two integers".into());
        };
        if end <= start {
            return Err(format!(
                "range [{start}, {end}) is empty: a map needs at least one item"
            ));
        }
        if (end - start) as u64 > MAP_ITEMS_MAX as u64 {
            return Err(format!(
                "range has {} items; at most {MAP_ITEMS_MAX}",
                end - start
            ));
        }
        return Ok(MapSource::Range {
            start: *start,
            end: *end,
        });
    }
    if m.lines.is_some() {
        return Err(
            "`lines` must be read when the spec is loaded (submit it with `troupe submit FILE`)"
                .into(),
        );
    }
    let over = m.over.as_deref().unwrap_or_default();
    let mut parts = over.split('.');
    let (Some("steps"), Some(id), Some("output")) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "`over` must look like \"steps.<id>.output\" or \"steps.<id>.output.<field>\", not {over:?}"
        ));
    };
    let Some(&j) = index.get(id) else {
        return Err(format!("`over` names unknown step \"{id}\""));
    };
    if !needs.contains(&(j as u16)) {
        return Err(format!(
            "`over` reads step \"{id}\", which must also be listed in `needs`"
        ));
    }
    Ok(MapSource::Upstream {
        step: j as u16,
        path: parts.map(str::to_string).collect(),
    })
}

/// `from` steps must be map steps that share one lane (so they have the same items, one to one).
pub(super) fn check_lanes(
    spec: &Spec,
    err: impl Fn(Option<(usize, &str)>, &str, String) -> SpecError,
) -> Result<(), SpecError> {
    for (i, s) in spec.steps.iter().enumerate() {
        let Some(MapSource::From(parents)) = &s.map else {
            continue;
        };
        let at = Some((i, s.id.as_str()));
        for &p in parents {
            let up = &spec.steps[p as usize];
            if up.map.is_none() {
                return Err(err(
                    at,
                    "map",
                    format!(
                        "`from` reads step \"{}\", which is not a map step: `from` chains map steps item by item (use `needs` and `{{{{ steps.{}.output }}}}` for a single step)",
                        up.id, up.id
                    ),
                ));
            }
        }
        let root = spec.lane_root(parents[0] as usize);
        for &p in &parents[1..] {
            let other = spec.lane_root(p as usize);
            if other != root {
                return Err(err(
                    at,
                    "map",
                    format!(
                        "`from` joins \"{}\" and \"{}\", whose items come from different steps (\"{}\" and \"{}\"): a join needs branches of the same items",
                        spec.steps[parents[0] as usize].id,
                        spec.steps[p as usize].id,
                        spec.steps[root].id,
                        spec.steps[other].id
                    ),
                ));
            }
        }
    }
    Ok(())
}
