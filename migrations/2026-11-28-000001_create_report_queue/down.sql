DROP TABLE report_queue;
