// What both chunk-score kernels (vmoba.cu's chunk_scores, vmoba_scores_sm90.cu) share. Chunk
// scores q . mean run as one 16-bit tensor-core product with f32 sums: each mean in SCORE_PARTS
// parts of the inputs' dtype (vmoba.cu's split_means: the mean rounded, then what each rounding
// left, rounded), each part multiplied by the same query. Products of 16-bit values are exact in
// f32, and three bf16 parts hold 24 bits of a mean: the scores are f32 q . mean up to the order
// of the sums, as a product in f32 would be, and equal means score equally (every chunk's sum
// runs in the same order). Scores go to rows of `ld` f32 (n rounded up to even: two columns a
// store), columns n .. ld getting zeros.
#pragma once

constexpr int SCORE_PARTS = 3;
