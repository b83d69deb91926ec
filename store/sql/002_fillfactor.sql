-- Room in every page for the row's next versions, so that an update that changes no
-- indexed column stays on its page (a HOT update: no new index entries).
ALTER TABLE payments SET (fillfactor = 70);
ALTER TABLE carts SET (fillfactor = 70);
