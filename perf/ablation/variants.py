#!/usr/bin/env python3
"""Ablation variants of xlb_xdp (issue #14): each variant is a copy of a
tree's xdp/ and lb/bpf/ with one or more stages short-circuited, compiled
with the build's clang flags, for `xlb-perf scale --variant NAME=OBJ` (new
flows at a table fill) or `xlb-perf compare OBJ` (the reference frames).

    perf/ablation/variants.py TREE OUTDIR NAME[+NAME...] ...

builds OUTDIR/NAME.o; NAME+NAME applies several patches. Patches are exact
text replacements and fail loudly when the source they expect has moved.
A variant only times a path: its behaviour is not the datapath's (e.g.
`noins` never writes xlb_ct). (Session 5's `sact`, a prototype
set-associative table, is now the datapath's xlb_ct: lb/bpf/conntrack.h.)"""
import os, shutil, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
P = {
 'base': [],
 'noins': [('lb/bpf/maglev.h', 'xlb_ct_insert(key, sel->hash, svc->id, sel->backend_id, be->gen, now);', '(void)0;')],
 'noctl': [('lb/bpf/maglev.h', 'be = xlb_ct_lookup(key, sel->hash, svc->id, &sel->backend_id);', 'be = NULL;')],
 'noadmit': [('lb/bpf/maglev.h', 'if (xlb_ct_admit(now))\n', '')],
 'nofwd': [('xdp/xlb_xdp.c', '	return xlb_forward(ctx, &pkt, svc, &sel, vaddr, vport, 0, bytes, reason);\n}', '	*reason = XLB_PASS_NOT_FRONTEND; return XDP_PASS + 0 * (vport + vaddr[0]);\n}')],
 'pass0': [('xdp/xlb_xdp.c', '	int verdict = xlb_process(ctx, bytes, &reason);', '	int verdict = XDP_PASS; return verdict + bytes * 0 + reason * 0;')],
 'passparse': [('xdp/xlb_xdp.c', '	rc = xlb_parse(ctx, &pkt);\n	if (rc)\n		return xlb_fail(rc, reason);\n', '	rc = xlb_parse(ctx, &pkt);\n	if (rc)\n		return xlb_fail(rc, reason);\n	*reason = XLB_PASS_NOT_FRONTEND; if (pkt.tuple.sport != 1) return XDP_PASS;\n')],
 'nomag': [('lb/bpf/maglev.h', 'rc = xlb_maglev_slot(svc->id, size, hash % size, &sk.index);', 'sk.index = hash % 10; rc = 0;')],
 'noktime': [('lb/bpf/maglev.h', '	now = bpf_ktime_get_ns();\n	sel->hash', '	now = 0;\n	sel->hash')],
 'noevt': [('xdp/xlb_xdp.c', '	if (sel->new_flow)\n		xlb_ev_new_flow', '	if (0)\n		xlb_ev_new_flow')],
 'passfc': [('xdp/xlb_xdp.c', '	if (xlb_fc_hit(fc, &pkt.tuple, now, gen)) {\n		if (fc->backend_id == XLB_FC_NOT_FRONTEND)', '	if (pkt.tuple.sport != 1 && !xlb_fc_hit(fc, &pkt.tuple, now, gen)) return xlb_fail(-XLB_PASS_NOT_FRONTEND, reason);\n	if (xlb_fc_hit(fc, &pkt.tuple, now, gen)) {\n		if (fc->backend_id == XLB_FC_NOT_FRONTEND)')],
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
    subprocess.run(['clang', '-O2', '-g', '-target', 'bpf', '-Wall', '-Werror', '-Wno-unused-function',
                    '-I/usr/include/x86_64-linux-gnu', f'-I{d}/lb/bpf', '-c', f'{d}/xdp/xlb_xdp.c', '-o', os.path.join(out, f'{name}.o')], check=True)
    print('built', name)
