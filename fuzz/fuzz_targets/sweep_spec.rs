//! The sweep-spec decoder on arbitrary bytes: a protobuf `tuna.v1.CreateSweepRequest` (what
//! `CreateSweep` receives) or a stored `tuna.v1.SweepSpec` (what the controller re-decodes)
//! through `tuna_server::sweeps::plan::SweepPlan`, and the client's JSON / TOML sweep files.
//!
//! Checks: no panic; an accepted spec's normalized proto (what the store keeps) re-decodes
//! through the controller's path to the same proto; its searcher builds and its first
//! suggestions turn into trial job specs without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tuna_proto::v1 as pb;
use tuna_server::sweeps::plan::SweepPlan;

fn check(spec: Option<&pb::SweepSpec>) {
    let Ok(plan) = SweepPlan::from_proto(spec) else {
        return;
    };
    let stored = plan.proto.encode_to_vec();
    let again = SweepPlan::decode(&stored)
        .unwrap_or_else(|e| panic!("an accepted sweep's stored spec does not re-decode: {e}"));
    assert_eq!(again.proto, plan.proto, "the normalized spec is not a fixed point");
    let mut searcher = plan
        .searcher()
        .unwrap_or_else(|e| panic!("an accepted sweep has no searcher: {e}"));
    if let Ok(suggestions) = searcher.suggest(3) {
        for s in suggestions {
            let _ = plan.job_spec(&s.params, s.budget);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(req) = pb::CreateSweepRequest::decode(body) {
                check(req.spec.as_ref());
            }
        }
        1 => {
            // The controller's path for a stored spec; also must not panic.
            let _ = SweepPlan::decode(body);
            if let Ok(spec) = pb::SweepSpec::decode(body) {
                check(Some(&spec));
            }
        }
        m => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            if let Ok(spec) =
                tuna_client::spec_file::parse::<pb::SweepSpec>(text, m == 3, "tuna.v1.SweepSpec")
            {
                check(Some(&spec));
            }
        }
    }
});
