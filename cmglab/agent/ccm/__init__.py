"""The installed ConfigMgr client (CcmExec's components), shared by ccmsetup and ccmexec."""
