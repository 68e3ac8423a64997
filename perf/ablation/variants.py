#!/usr/bin/env python3
"""Ablation variants of xlb_xdp (issue #14): each variant is a copy of a
tree's xdp/ and lb/bpf/ with one or more stages short-circuited, compiled
with the build's clang flags, for `xlb-perf scale --variant NAME=OBJ` (new
flows at a table fill) or `xlb-perf compare OBJ` (the reference frames).

    perf/ablation/variants.py TREE OUTDIR NAME[+NAME...] ...

builds OUTDIR/NAME.o; NAME+NAME applies several patches. Patches are exact
text replacements and fail loudly when the source they expect has moved.
A variant only times a path: its behaviour is not the datapath's (e.g.
`noins` never writes xlb_ct). `sact` swaps xlb_ct for a prototype 4-way
set-associative table in an ARRAY map (sa_ct.h here, private to each
load: it fills from empty while being timed)."""
import os, shutil, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
P = {
 'base': [],
 'noins': [('lb/bpf/conntrack.h', 'bpf_map_update_elem(&xlb_ct, key, &ct, BPF_ANY);', '(void)ct;')],
 'noctl': [('lb/bpf/maglev.h', 'be = xlb_ct_lookup(key, svc->id, &sel->backend_id, &sel->hash);', 'be = NULL;')],
 'noadmit': [('lb/bpf/maglev.h', 'if (xlb_ct_admit(now))\n', '')],
 'nofwd': [('xdp/xlb_xdp.c', '	return xlb_forward(ctx, &pkt, svc, &sel, vaddr, vport, 0, bytes, reason);\n}', '	*reason = XLB_PASS_NOT_FRONTEND; return XDP_PASS + 0 * (vport + vaddr[0]);\n}')],
 'pass0': [('xdp/xlb_xdp.c', '	int verdict = xlb_process(ctx, bytes, &reason);', '	int verdict = XDP_PASS; return verdict + bytes * 0 + reason * 0;')],
 'passparse': [('xdp/xlb_xdp.c', '	rc = xlb_parse(ctx, &pkt);\n	if (rc)\n		return xlb_fail(rc, reason);\n', '	rc = xlb_parse(ctx, &pkt);\n	if (rc)\n		return xlb_fail(rc, reason);\n	*reason = XLB_PASS_NOT_FRONTEND; if (pkt.tuple.sport != 1) return XDP_PASS;\n')],
 'nomag': [('lb/bpf/maglev.h', 'rc = xlb_maglev_slot(svc->id, size, hash % size, &sk.index);', 'sk.index = hash % 10; rc = 0;')],
 'noktime': [('lb/bpf/maglev.h', '	now = bpf_ktime_get_ns();\n	sel->hash', '	now = 0;\n	sel->hash')],
 'noevt': [('xdp/xlb_xdp.c', '	if (sel->new_flow)\n		xlb_ev_new_flow', '	if (0)\n		xlb_ev_new_flow')],
 'passfc': [('xdp/xlb_xdp.c', '	if (xlb_fc_hit(fc, &pkt.tuple, now, gen)) {\n		if (fc->backend_id == XLB_FC_NOT_FRONTEND)', '	if (pkt.tuple.sport != 1 && !xlb_fc_hit(fc, &pkt.tuple, now, gen)) return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);\n	if (xlb_fc_hit(fc, &pkt.tuple, now, gen)) {\n		if (fc->backend_id == XLB_FC_NOT_FRONTEND)')],
 'sact': [('lb/bpf/conntrack.h', '\tstruct xlb_ct_entry *ct = bpf_map_lookup_elem(&xlb_ct, key);\n\tstruct xlb_backend *be;\n\n\t/* svc_id: a frontend handed to another service re-selects. */\n\tif (!ct || ct->svc_id != svc_id)\n\t\treturn NULL;', '\t__u32 set = xlb_flow_hash(key) & (XLB_SA_SETS - 1);\n\tstruct xlb_sa_set *st = bpf_map_lookup_elem(&xlb_ct_sa, &set);\n\tstruct xlb_sa_way *ct = NULL;\n\tstruct xlb_backend *be;\n\n\tif (!st)\n\t\treturn NULL;\n\tfor (int i = 0; i < XLB_SA_WAYS; i++)\n\t\tif (xlb_sa_eq(&st->w[i].key, key)) {\n\t\t\tct = &st->w[i];\n\t\t\tbreak;\n\t\t}\n\tif (!ct || ct->svc_id != svc_id)\n\t\treturn NULL;'), ('lb/bpf/conntrack.h', '\tbpf_map_update_elem(&xlb_ct, key, &ct, BPF_ANY);', '\t__u32 set = hash & (XLB_SA_SETS - 1), v = 0;\n\tstruct xlb_sa_set *st = bpf_map_lookup_elem(&xlb_ct_sa, &set);\n\t__u64 oldest = ~0ull;\n\n\tif (!st)\n\t\treturn;\n\tfor (int i = 0; i < XLB_SA_WAYS; i++)\n\t\tif (st->w[i].stamp < oldest) {\n\t\t\toldest = st->w[i].stamp;\n\t\t\tv = i;\n\t\t}\n\tv &= XLB_SA_WAYS - 1;\n\tst->w[v].key = *key;\n\tst->w[v].backend_id = ct.backend_id;\n\tst->w[v].backend_gen = ct.backend_gen;\n\tst->w[v].svc_id = ct.svc_id;\n\tst->w[v].hash = ct.hash;\n\tst->w[v].stamp = now;'), ('lb/bpf/conntrack.h', '#define XLB_NSEC_PER_SEC 1000000000ull\n', '#define XLB_NSEC_PER_SEC 1000000000ull\n#include "sa_ct.h"\n')],
 'nocount': [('lb/bpf/counters.h', '	xlb_count(hook, reason, bytes);\n	if (xlb_reason', '	if (xlb_reason')],
 'nostats': [('xdp/xlb_xdp.c', '	xlb_count_svc(svc->id, bytes, sel->new_flow, sel->affinity_hit);\n	xlb_count_backend(sel->backend_id, bytes);\n', '')],
}
src, out = sys.argv[1], sys.argv[2]
for name in sys.argv[3:]:
    parts = name.split('+')
    d = os.path.join(out, f'src-{name}')
    shutil.rmtree(d, ignore_errors=True)
    for sub in ['xdp', 'lb/bpf']:
        shutil.copytree(os.path.join(src, sub), os.path.join(d, sub))
    for part in parts:
        for f, old, new in P[part]:
            p = os.path.join(d, f)
            s = open(p).read()
            assert s.count(old) == 1, (name, f, old)
            open(p, 'w').write(s.replace(old, new))
    shutil.copy(os.path.join(HERE, 'sa_ct.h'), os.path.join(d, 'lb/bpf'))
    subprocess.run(['clang', '-O2', '-g', '-target', 'bpf', '-Wall', '-Werror', '-Wno-unused-function',
                    '-I/usr/include/x86_64-linux-gnu', f'-I{d}/lb/bpf', '-c', f'{d}/xdp/xlb_xdp.c', '-o', os.path.join(out, f'{name}.o')], check=True)
    print('built', name)
