DROP INDEX report_queue_finished_idx;
