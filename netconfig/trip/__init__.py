"""The multicast trip path: the kernel copies the BMI's trip datagrams to the sites,
outside the relay (docs/trip-path.md). One module per job:

    config.py      the `multicast:` section: parser and checks
    plan.py        the kernel entries wanted for the links' active paths (pure)
    render.py      smcrouted's file and the nftables table from that plan (text)
    tables.py      the kernel's tables (/proc, `nft -j`) and nft's errors, parsed (text in)
    verdict.py     the kernel's entries judged against the plan (pure)
    capability.py  what this kernel offers (MRT_INIT, nftables dup) and the engine chosen
    smcroute.py    the routing-table engine: smcrouted supervised (netd); the state both engines report
    nftables.py    the nftables `dup` engine (netd)
    report.py      `concentrator trip-path`: the diagnostic
"""
