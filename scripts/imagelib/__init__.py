"""A built image, without a container runtime: its config and layers from buildah's store
(`store`), its root filesystem run as its own user (`container`), and `scripts/image-report`
(`report`)."""
