//! The job-spec decoders on arbitrary bytes: a protobuf `tuna.v1.JobSpec` (what `CreateJob`
//! receives) through `tuna_spec::JobSpec::from_proto`, and the client's JSON / TOML spec
//! files (`tuna_client::spec_file::parse`) into the same validation.
//!
//! Checks: no panic; a spec that validates re-validates from its own `to_proto` (what
//! clients and workers receive) to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tuna_proto::v1 as pb;
use tuna_spec::JobSpec;

fn check(spec: &pb::JobSpec) {
    let Ok(job) = JobSpec::from_proto(Some(spec)) else {
        return;
    };
    let again = JobSpec::from_proto(Some(&job.to_proto()))
        .unwrap_or_else(|v| panic!("a valid spec's to_proto does not re-validate: {v:?}"));
    assert_eq!(again, job, "to_proto/from_proto does not round-trip");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(spec) = pb::JobSpec::decode(body) {
                check(&spec);
            }
            if let Ok(req) = pb::CreateJobRequest::decode(body) {
                if let Some(spec) = &req.spec {
                    check(spec);
                }
            }
        }
        m => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            let is_toml = m == 2;
            if let Ok(spec) =
                tuna_client::spec_file::parse::<pb::JobSpec>(text, is_toml, "tuna.v1.JobSpec")
            {
                check(&spec);
            }
        }
    }
});
