//! The instance image's build context: a Dockerfile `FROM scratch` holding the static
//! `hotpocket` binary and a static busybox for script contracts.
